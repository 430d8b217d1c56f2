import NIOHTTP1
import Testing

@testable import Gateway

/// The byte comparisons that replace lowercased `String`s and `Set<String>` probes on the request
/// path must agree with them exactly.
@Suite("Field names compared as bytes")
struct FieldNameTests {
    static let names = Array(HeaderRewriter.hopByHop) + Array(HeaderRewriter.spoofable) + Array(HeaderRewriter.gatewayOwned) + [
        "host", "content-length", "x-forwarded", "te ", "tE", "Transfer-Encoding", "TRANSFER-ENCODING", "x-request-ID",
        "proxy-connectio", "keep-alive2", "upgrade", "Upgrade", "expect", "accept", "", "\u{e9}xpect", "[onnection",
    ]

    @Test("tchar is exactly RFC 9110's list, for every byte")
    func tokenBytes() {
        let listed = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for byte in 0...255 {
            #expect(isHTTPTokenByte(UInt8(byte)) == listed.contains(UInt8(byte)), "byte \(byte)")
        }
    }

    @Test("An HTTP/2 :method read from its bytes is the method HTTPMethod(rawValue:) reads")
    func http2MethodBytes() {
        let methods = ["GET", "PUT", "POST", "HEAD", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PROPFIND",
                       "get", "Post", "GETS", "GE", "", "PURGE", "X-CUSTOM", "OPTIONs", "CONNECTX"]
        for method in methods {
            let read = method.withUTF8Bytes { HTTP2Stream.method($0) }
            #expect(read == HTTPMethod(rawValue: method), "\(method)")
        }
    }

    @Test("A method set answers as the set of the methods' names does, and the case tests as NIO's ==")
    func methodSets() {
        let methods: [HTTPMethod] = [.GET, .HEAD, .POST, .PUT, .DELETE, .OPTIONS, .PATCH, .TRACE, .CONNECT, .PURGE,
                                     .PROPFIND, .RAW(value: "get"), .RAW(value: "X-CUSTOM"), .RAW(value: "")]
        let sets: [[String]] = [[], ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"], ["POST"], ["get", "PURGE"], ["X-CUSTOM", "TRACE", "CONNECT", "PATCH"]]
        for names in sets {
            let set = HTTPMethodSet(names)
            for method in methods {
                #expect(set.contains(method) == Set(names).contains(method.rawValue), "\(names) \(method)")
            }
        }
        for method in methods {
            #expect(method.isHEAD == (method == .HEAD) && method.isCONNECT == (method == .CONNECT) && method.isOPTIONS == (method == .OPTIONS))
        }
    }

    @Test("A field-name set answers as a set of lowercased names does, whatever the case or length")
    func fieldNameSets() {
        let long = String(repeating: "x", count: 70), longer = String(repeating: "x", count: 80)
        let sets: [[String]] = [[], ["x-user-id"], ["X-User-Id", "x-user-role", "CF-Connecting-IP"], [long, "a", "authorization"], ["te", "TE"]]
        let candidates = Self.names + ["x-user-id", "X-USER-ID", "x-user-i", "x-user-idd", "cf-connecting-ip", long, longer, "A", "b", "Authorization"]
        for names in sets {
            let set = FieldNameSet(names)
            let reference = Set(names.map { $0.lowercased() })
            #expect(set.names.isEmpty == reference.isEmpty && set.names.count == reference.count)
            for candidate in candidates {
                #expect(set.contains(candidate) == reference.contains(candidate.lowercased()), "\(names) \(candidate)")
            }
            #expect(set.union(["Extra-Name"]).contains("extra-name") && !set.contains("extra-name"))
        }
    }

    @Test("Case-insensitive equality matches lowercased()")
    func equality() {
        for name in Self.names {
            for candidate in ["connection", "host", "x-forwarded-for", "te", "expect"] {
                #expect(name.equalsIgnoringASCIICase(candidate) == (name.lowercased() == candidate), "\(name) vs \(candidate)")
            }
            #expect(name.equalsIgnoringASCIICase("connection" as StaticString) == (name.lowercased() == "connection"))
        }
    }

    @Test("A Connection value names more fields exactly when one of its tokens is not always dropped")
    func connectionTokensNamingMore() {
        let plain = ["keep-alive", "Keep-Alive", "close", " close ", "keep-alive, Upgrade", "upgrade,,TE", "", " , ", "\tclose\t"]
        for value in plain { #expect(!HeaderRewriter.connectionNamesMore(value), "\(value)") }
        let naming = ["keep-alive, X-Private", "x-private", "close,foo", "keep-alive2", "kee-palive", "close foo", "c\u{e9}lose"]
        for value in naming { #expect(HeaderRewriter.connectionNamesMore(value), "\(value)") }
        // Every CORS field name, whatever its case; nothing else.
        for name in ResponseAdditions.corsFields.flatMap({ [$0, $0.uppercased()] }) { #expect(ResponseAdditions.isCORSField(name)) }
        for name in ["access-control-allow-origins", "access-control-request-method", "vary", "a"] { #expect(!ResponseAdditions.isCORSField(name)) }
    }

    @Test("One pass: a response or request whose Connection names nothing more keeps its other fields")
    func singlePassConnection() {
        let response = HTTPResponseHead(version: .http1_1, status: .ok, headers: HTTPHeaders([
            ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("Close", "kept"), ("content-length", "0"),
        ]))
        let out = HeaderRewriter.clientResponse(response, requestMethod: .GET, clientVersion: .http1_1, requestID: "r", addHSTS: false).0.headers
        #expect(out["connection"].isEmpty && out["keep-alive"].isEmpty)
        #expect(out["close"] == ["kept"])
    }

    @Test("isHopByHop is membership in hopByHop, whatever the case")
    func hopByHop() {
        for name in Self.names + Self.names.map({ $0.uppercased() }) {
            #expect(HeaderRewriter.isHopByHop(name) == HeaderRewriter.hopByHop.contains(name.lowercased()), "\(name)")
        }
    }

    @Test("List elements match NIO's canonical form, lowercased", arguments: [
        "upgrade", "Upgrade", " keep-alive ,\tUPGRADE\t", "keep-alive", "upgrade2", "up grade", ",,upgrade,", "", " , ",
        "keep-alive, upgrade, close", "upgradeX, Xupgrade",
    ])
    func listElements(value: String) {
        let headers = HTTPHeaders([("connection", value)])
        let expected = headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
        #expect(value.containsListElement("upgrade") == expected)
    }

    @Test("The validating pass hands over Host, the first X-Request-Id and Expect: 100-continue")
    func validatedHead() throws {
        let head = RequestHead(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/api/x", headers: HTTPHeaders([
            ("HOST", "api.example"), ("X-Request-ID", "first"), ("x-request-id", "second"), ("Expect", " 100-Continue "),
            ("Content-Length", "3"),
        ])))
        let validated = try RequestValidator.inspect(head).get()
        #expect(validated.host == head.headers.first(name: "host"))
        #expect(validated.requestID == head.headers.first(name: "x-request-id"))
        #expect(validated.requestID == "first")
        #expect(validated.expectsContinue)
        #expect(validated.framing == .contentLength(3))
        let plain = RequestHead(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: HTTPHeaders([("host", "h"), ("expect", "x")])))
        let other = try RequestValidator.inspect(plain).get()
        #expect(!other.expectsContinue && other.requestID == nil && other.host == "h")
    }

    /// The word-at-a-time field-value check against the byte rule, on every byte value at every
    /// position of buffers up to 40 bytes long (so each lands in a word and in the tail), plus
    /// random buffers mostly of allowed bytes.
    @Test("Field values checked eight bytes at a time agree with the byte rule")
    func fieldValueWords() {
        func reference(_ bytes: [UInt8]) -> Bool { bytes.allSatisfy { $0 >= 0x20 ? $0 != 0x7F : $0 == 0x09 } }
        func check(_ bytes: [UInt8]) {
            let fast = bytes.withUnsafeBufferPointer(RequestValidator.isFieldValue(bytes:))
            #expect(fast == reference(bytes), "\(bytes)")
        }
        for length in 1...40 {
            for position in 0..<length {
                for byte in UInt8.min...UInt8.max {
                    var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                    bytes[position] = byte
                    check(bytes)
                }
            }
        }
        var random = SplitMix64(seed: 0xF1E1D)
        let pool: [UInt8] = [0x00, 0x09, 0x0A, 0x0D, 0x1F, 0x20, 0x41, 0x7E, 0x7F, 0x80, 0x9F, 0xFF]
        for _ in 0..<20_000 {
            let length = Int.random(in: 0...64, using: &random)
            check((0..<length).map { _ in
                Int.random(in: 0..<8, using: &random) == 0 ? pool.randomElement(using: &random)! : UInt8.random(in: 0x20...0x7E, using: &random)
            })
        }
    }

    @Test("Trimming OWS works on bytes")
    func trimming() {
        #expect(Substring(" \t a b \t ").trimmingSpaces == "a b")
        #expect(Substring("\t\t").trimmingSpaces == "")
        #expect(Substring("").trimmingSpaces == "")
        #expect(Substring("x").trimmingSpaces == "x")
        #expect(Substring(" \u{e9} ").trimmingSpaces == "\u{e9}")
        #expect(Substring("\r\n a \n").trimmingSpaces == "\r\n a \n")
    }
}

/// `tokenEqualsIgnoringASCIICase` answers as the byte-by-byte comparison for every token: the
/// literals the parsers use, each with its letters' case flipped and with every token byte at
/// every position, and random tokens of every length up to 20.
@Suite struct TokenComparisonTests {
    static let literals: [StaticString] = [
        "host", "expect", "upgrade", "connection", "traceparent", "x-request-id", "content-type", "content-length",
        "proxy-connection", "transfer-encoding", "te", "abc",
    ]

    @Test func agreesWithTheByteLoop() {
        let tokenBytes = (0...255).map(UInt8.init).filter(isHTTPTokenByte)
        var random = SplitMix64(seed: 0x544F_4B45_4E)
        var compared = 0, equal = 0
        func check(_ bytes: [UInt8], _ literal: StaticString) {
            bytes.withUnsafeBufferPointer { name in
                let expected = bytesEqualIgnoringASCIICase(name, literal)
                #expect(tokenEqualsIgnoringASCIICase(name, literal) == expected, "\(String(decoding: bytes, as: UTF8.self)) vs \(literal)")
                compared += 1
                if expected { equal += 1 }
            }
        }
        for literal in Self.literals {
            let text = Array(UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
            check(text, literal)
            check(text.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }, literal)
            for position in text.indices {
                for byte in tokenBytes {
                    var mutated = text
                    mutated[position] = byte
                    check(mutated, literal)
                }
            }
            for length in 0...20 {
                check((0..<length).map { _ in tokenBytes.randomElement(using: &random)! }, literal)
            }
        }
        #expect(equal > Self.literals.count * 2 && compared > equal * 10, "\(equal) of \(compared)")
    }
}
