import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
@testable import Gateway

/// Differential tests of the HTTP/1.1 fast path: every input goes through the gateway's decoder
/// (`GatewayRequestDecoder`: strict heads in place, llhttp for the rest) and through NIO's llhttp
/// decoder alone, configured the same. They must decode the same messages and fail on the same
/// inputs; and a head the strict parser accepts must be one llhttp accepts with the same method,
/// target, version, fields and body length. Cases are random and mutated request smuggling
/// vectors from a seeded generator: `FUZZ_CASES` and `FUZZ_SEED` (`make fuzz`) run more.
@Suite struct StrictHeadDifferentialTests {
    static let defaultCases = 3000

    // MARK: - Fixed vectors

    @Test(arguments: [
        // Framing that an upstream could read differently: all left to llhttp.
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3,3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\n\n",
        "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHo\0st: a\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        "GET / HTTP/0.9\r\n\r\n",
        "get / HTTP/1.1\r\nHost: a\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: caf\u{e9}\r\n\r\n",
        "GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
        // Strict heads: the fast path decodes these.
        "GET /api/bookings?id=1&x=%20 HTTP/1.1\r\nHost: a\r\nUser-Agent: h2load nghttp2/1.52.0\r\nAccept: */*\r\n\r\n",
        "POST /api/auth/login HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "DELETE /a HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Spaces:   v  \t\r\nConnection: close\r\n\r\n",
        // After a request that is not kept alive, llhttp refuses what follows.
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a\r\n\r\n\r\nGET / HTTP/1.0\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, keep-alive\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ])
    func fixedVector(_ text: String) throws {
        let input = Array(text.utf8)
        try Self.compare(input, splits: [], maxHeadBytes: 8192)
        for cut in 0...input.count {
            try Self.compare(input, splits: [cut], maxHeadBytes: 8192)
        }
    }

    @Test func strictHeadsTakeTheFastPath() throws {
        let head = Array("GET /api/bookings HTTP/1.1\r\nHost: example\r\nContent-Length: 2\r\n\r\nok".utf8)
        var fields: [StrictRequestHead.Field] = []
        let outcome = head.withUnsafeBytes { StrictRequestHead.parse($0, maxHeadBytes: 8192, fields: &fields) }
        guard case .parsed(let parsed) = outcome else {
            Issue.record("not parsed: \(outcome)")
            return
        }
        #expect(parsed.method == .GET && parsed.version == .http1_1 && parsed.contentLength == 2)
        #expect(parsed.headLength == head.count - 2)
        #expect(fields.count == 2)
        // Every proper prefix of a strict head waits for more bytes.
        for length in 0..<parsed.headLength {
            let prefix = Array(head[..<length])
            let partial = prefix.withUnsafeBytes { StrictRequestHead.parse($0, maxHeadBytes: 8192, fields: &fields) }
            #expect(partial == .needMoreBytes, "prefix of \(length) bytes")
        }
        // Over the limit, llhttp judges it.
        let small = head.withUnsafeBytes { StrictRequestHead.parse($0, maxHeadBytes: 32, fields: &fields) }
        #expect(small == .notStrict)
    }

    // MARK: - Random and mutated cases

    @Test func randomAndMutatedCasesDecodeAsLLHTTPDoes() throws {
        let environment = ProcessInfo.processInfo.environment
        let cases = environment["FUZZ_CASES"].flatMap(Int.init) ?? Self.defaultCases
        let seed = environment["FUZZ_SEED"].flatMap(UInt64.init) ?? 0x5EED_0011
        var random = SplitMix64(seed: seed)
        var strictAccepted = 0
        var strictRefused = 0
        for number in 0..<cases {
            var generator = RequestGenerator(random: random)
            let input = generator.input()
            let maxHeadBytes = generator.random.chance(1, in: 8) ? Int.random(in: 24...256, using: &generator.random) : 8192
            random = generator.random
            var fields: [StrictRequestHead.Field] = []
            let outcome = input.withUnsafeBytes { StrictRequestHead.parse($0, maxHeadBytes: maxHeadBytes, fields: &fields) }
            if case .parsed = outcome { strictAccepted += 1 } else if outcome == .notStrict { strictRefused += 1 }

            var splits: [Int] = []
            for _ in 0..<Int.random(in: 0...3, using: &random) where !input.isEmpty {
                splits.append(Int.random(in: 0...input.count, using: &random))
            }
            try Self.compare(input, splits: splits.sorted(), maxHeadBytes: maxHeadBytes, label: "case \(number) seed \(seed)")
            // Some cases at every byte boundary.
            if number % 97 == 0 {
                for cut in 0...input.count {
                    try Self.compare(input, splits: [cut], maxHeadBytes: maxHeadBytes, label: "case \(number) cut \(cut)")
                }
            }
        }
        // The generator reaches both sides of the grammar (a test of the test).
        #expect(strictAccepted > cases / 10, "strict heads: \(strictAccepted) of \(cases)")
        #expect(strictRefused > cases / 10, "fallbacks: \(strictRefused) of \(cases)")
    }

    // MARK: - Running both decoders

    /// What a decoder made of an input: messages (consecutive body parts joined) and whether it failed.
    struct Decoded: Equatable, CustomStringConvertible {
        struct Message: Equatable {
            var method: HTTPMethod
            var uri: String
            var version: HTTPVersion
            var fields: [String]
            var keepAlive: Bool
            var body: [UInt8] = []
            var ended = false
        }

        var messages: [Message] = []
        var failed = false

        var description: String {
            "failed: \(self.failed), messages: "
                + self.messages.map { "\($0.method) \($0.uri) \($0.version) \($0.fields) body \($0.body.count) ended \($0.ended)" }
                .joined(separator: "; ")
        }
    }

    final class Collector: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart

        var decoded = Decoded()

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch self.unwrapInboundIn(data) {
            case .head(let head):
                self.decoded.messages.append(.init(
                    method: head.method, uri: head.uri, version: head.version,
                    fields: head.headers.map { "\($0.name): \($0.value)" }, keepAlive: head.isKeepAlive
                ))
            case .body(let body):
                self.decoded.messages[self.decoded.messages.count - 1].body += body.readableBytesView
            case .end:
                self.decoded.messages[self.decoded.messages.count - 1].ended = true
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            self.decoded.failed = true
        }
    }

    static func decode(_ input: [UInt8], splits: [Int], decoder: ChannelHandler) throws -> Decoded {
        let collector = Collector()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers([decoder, collector])
        var start = 0
        for cut in splits + [input.count] where cut >= start {
            var buffer = channel.allocator.buffer(capacity: cut - start)
            buffer.writeBytes(input[start..<cut])
            start = cut
            if collector.decoded.failed { break }
            do { try channel.writeInbound(buffer) } catch { collector.decoded.failed = true }
        }
        _ = try? channel.finish()
        return collector.decoded
    }

    static func compare(_ input: [UInt8], splits: [Int], maxHeadBytes: Int, label: String = "") throws {
        let gateway = try self.decode(input, splits: splits, decoder: HTTP1Pipeline.requestDecoder(maxHeaderBytes: maxHeadBytes))
        let reference = try self.decode(
            input, splits: splits,
            decoder: ByteToMessageHandler(HTTP1Pipeline.llhttpDecoder(maxHeaderBytes: maxHeadBytes))
        )
        #expect(
            gateway == reference,
            "\(label) splits \(splits) max \(maxHeadBytes): \(String(decoding: input, as: UTF8.self).debugDescription)\n gateway: \(gateway)\n llhttp: \(reference)"
        )
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same cases on every machine.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { self.state = seed }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func chance(_ numerator: Int, in denominator: Int) -> Bool {
        Int.random(in: 0..<denominator, using: &self) < numerator
    }
}

/// Requests built from pieces that are valid, almost valid and known smuggling vectors, then
/// mutated byte by byte.
struct RequestGenerator {
    var random: SplitMix64

    static let methods = ["GET", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "get", "FOO", "GETT", "PROPFIND", "G ET", ""]
    static let targets = [
        "/", "/api/bookings", "/api/bookings?id=1&q=%41b", "/a/b/../c", "/~user/;p=1", "/x:y@z!$&'()*+,=",
        "*", "http://a.example/x", "a.example:443", "/sp ace", "/tab\t", "/hash#frag", "/\u{e9}", "/quote\"",
        "/a%", "/[brackets]", "/{braces}", "/back\\slash", "/pipe|", "/caret^", "/`", "//double",
    ]
    static let versions = [
        "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.10",
        "HTTP/01.1", "HTTP/1", "HTTP/1.1 ", "HTTP/11",
    ]
    static let names = [
        "Host", "User-Agent", "Accept", "X-Request-Id", "Connection", "Content-Length", "content-length",
        "Transfer-Encoding", "transfer-encoding", "Upgrade", "Expect", "X-Forwarded-For", "Cookie", "Authorization",
        "X-Very-Long-Field-Name-For-Strings", "a", "!#$%&'*+-.^_`|~", "Content-Length ", " Host", "X:Y", "X@Y",
        "Content-Lengt", "Transfer-Encoding\t", "Proxy-Connection", "proxy-connection",
    ]
    static let values = [
        "a.example", "h2load nghttp2/1.52.0", "*/*", "keep-alive", "close", "upgrade", "Upgrade, keep-alive",
        "websocket", "100-continue", "0", "3", "5", "05", "+5", "-1", "5, 5", "5,5", "5 5", " 5", "0x5", "99999999999999999999",
        "18446744073709551616", "chunked", "Chunked", "chunked, identity", "identity", "gzip, chunked", " chunked",
        "chunked ", "", "  spaced  ", "tab\tinside", "quote\"d", "caf\u{e9}", "1.1.1.1, 2.2.2.2", "a=b; c=d",
        "Bearer abc.def.ghi",
    ]

    init(random: SplitMix64) { self.random = random }

    mutating func pick<T>(_ items: [T]) -> T {
        items[Int.random(in: 0..<items.count, using: &self.random)]
    }

    /// One to three pipelined requests, then sometimes mutated.
    mutating func input() -> [UInt8] {
        var bytes: [UInt8] = []
        for _ in 0..<Int.random(in: 1...3, using: &self.random) {
            bytes += self.request()
        }
        if self.random.chance(1, in: 2) {
            for _ in 0..<Int.random(in: 1...3, using: &self.random) { self.mutate(&bytes) }
        }
        return bytes
    }

    mutating func request() -> [UInt8] {
        let strict = self.random.chance(1, in: 2)
        let method = strict ? self.pick(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]) : self.pick(Self.methods)
        let target = strict ? self.pick(Array(Self.targets[0..<6])) : self.pick(Self.targets)
        let version = strict ? self.pick(["HTTP/1.1", "HTTP/1.0"]) : self.pick(Self.versions)
        let space = strict || self.random.chance(3, in: 4) ? " " : self.pick(["  ", "\t", ""])
        var text = "\(method)\(space)\(target) \(version)\r\n"
        var bodyLength = 0
        for _ in 0..<Int.random(in: 0...6, using: &self.random) {
            var name = self.pick(Self.names)
            var value = self.pick(Self.values)
            // Strict requests mostly keep to plain fields, sometimes take any (special fields in
            // an otherwise strict head are where the two parsers could part).
            if strict && !self.random.chance(1, in: 4) {
                name = self.pick(["Host", "User-Agent", "Accept", "X-Request-Id", "Connection", "Cookie", "X-Very-Long-Field-Name-For-Strings"])
                value = self.pick(["a.example", "h2load nghttp2/1.52.0", "*/*", "keep-alive", "close", "", "  spaced  ", "a=b; c=d"])
            }
            if name.lowercased() == "content-length", let length = Int(value), (0..<64).contains(length) { bodyLength = length }
            if self.random.chance(1, in: 40) { value = String(repeating: "v", count: Int.random(in: 100...400, using: &self.random)) }
            let separator = strict || self.random.chance(5, in: 6) ? ": " : self.pick([":", " : ", ":\t", ":  "])
            text += "\(name)\(separator)\(value)\r\n"
        }
        if strict && self.random.chance(1, in: 3) {
            bodyLength = Int.random(in: 0...20, using: &self.random)
            text += "Content-Length: \(bodyLength)\r\n"
        }
        text += "\r\n"
        var bytes = Array(text.utf8)
        if text.lowercased().contains("transfer-encoding") && self.random.chance(1, in: 2) {
            bytes += Array(self.pick(["0\r\n\r\n", "3\r\nabc\r\n0\r\n\r\n", "3\nabc\n0\n\n", "x\r\n\r\n", "3;ext\r\nabc\r\n0\r\n\r\n"]).utf8)
        } else {
            bytes += (0..<bodyLength).map { _ in UInt8.random(in: 0x20...0x7E, using: &self.random) }
        }
        return bytes
    }

    static let interesting: [UInt8] = [0, 0x7F, 0x80, 0xFF, 0x0B, 0x0C, 9, 10, 13, 32, 58, 44, 59, 34, 47, 65, 97, 48, 57, 64, 35]

    mutating func mutate(_ bytes: inout [UInt8]) {
        guard !bytes.isEmpty else { return }
        let at = Int.random(in: 0..<bytes.count, using: &self.random)
        switch Int.random(in: 0..<8, using: &self.random) {
        case 0: bytes[at] = self.pick(Self.interesting)
        case 1: bytes.insert(self.pick(Self.interesting), at: at)
        case 2: bytes.remove(at: at)
        case 3:
            // CRLF → LF, or LF → CRLF somewhere.
            if let cr = bytes[at...].firstIndex(of: 13) { bytes.remove(at: cr) } else { bytes.insert(13, at: at) }
        case 4:
            // obs-fold: a continuation line.
            if let lf = bytes[at...].firstIndex(of: 10) { bytes.insert(contentsOf: Array(" folded\r\n".utf8), at: lf + 1) }
        case 5:
            // Space before a colon.
            if let colon = bytes[at...].firstIndex(of: 58) { bytes.insert(32, at: colon) }
        case 6:
            // Duplicate a line (duplicate Content-Length, Host, Transfer-Encoding...).
            if let lf = bytes[at...].firstIndex(of: 10), let start = bytes[..<at].lastIndex(of: 10) {
                bytes.insert(contentsOf: Array(bytes[(start + 1)...lf]), at: lf + 1)
            }
        default:
            bytes[at] = UInt8.random(in: 0...255, using: &self.random)
        }
    }
}
