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
        for name in Self.names + Self.names.map { $0.uppercased() } {
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
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/api/x", headers: HTTPHeaders([
            ("HOST", "api.example"), ("X-Request-ID", "first"), ("x-request-id", "second"), ("Expect", " 100-Continue "),
            ("Content-Length", "3"),
        ]))
        let validated = try RequestValidator.inspect(head).get()
        #expect(validated.host == head.headers.first(name: "host"))
        #expect(validated.requestID == head.headers.first(name: "x-request-id"))
        #expect(validated.requestID == "first")
        #expect(validated.expectsContinue)
        #expect(validated.framing == .contentLength(3))
        let plain = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: HTTPHeaders([("host", "h"), ("expect", "x")]))
        let other = try RequestValidator.inspect(plain).get()
        #expect(!other.expectsContinue && other.requestID == nil && other.host == "h")
    }
}
