import NIOHTTP1
import Testing

@testable import Gateway

/// Response fields from upstreams on their way to clients: trimmed for everyone (RFC 9110 §5.5),
/// and made acceptable to HTTP/2 clients (RFC 9113 §8.2).
@Suite("Header rewriting, response side")
struct HeaderRewriterResponseTests {
    func clientHeaders(_ pairs: [(String, String)], version: HTTPVersion = .http1_1) -> HTTPHeaders {
        let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: HTTPHeaders(pairs + [("content-length", "0")]))
        return HeaderRewriter.clientResponse(
            head, requestMethod: .GET, clientVersion: version, requestID: "r", addHSTS: false
        ).0.headers
    }

    @Test func valuesLoseSurroundingWhitespace() {
        let headers = clientHeaders([("Server", "name "), ("X-A", "   v  "), ("X-Tab", "\tt\t"), ("X-Inner", "a  b")])
        #expect(headers["server"] == ["name"])
        #expect(headers["x-a"] == ["v"])
        #expect(headers["x-tab"] == ["t"])
        // Whitespace inside a value is part of it.
        #expect(headers["x-inner"] == ["a  b"])
    }

    @Test func trimmingLeavesCleanValuesAlone() {
        #expect(HeaderRewriter.trimmedFieldValue("v") == "v")
        #expect(HeaderRewriter.trimmedFieldValue("") == "")
        #expect(HeaderRewriter.trimmedFieldValue("  ") == "")
    }

    @Test(arguments: [
        ("connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"), ("upgrade", "h2c"), ("te", "gzip"),
    ])
    func connectionSpecificFieldsAreDropped(name: String, value: String) {
        #expect(HeaderRewriter.http2ResponseField(name: name, value: value) == nil)
    }

    /// The HTTP/2 field rule tests names with `isHopByHop`: every connection-specific name must be
    /// one it drops, and nothing else.
    @Test func connectionSpecificNamesAreExactlyTheHopByHopOnes() {
        #expect(HeaderRewriter.connectionSpecific == HeaderRewriter.hopByHop)
        for name in HeaderRewriter.connectionSpecific {
            #expect(HeaderRewriter.http2ResponseField(name: name.uppercased(), value: "v") == nil, "\(name)")
        }
        for name in ["x-connection", "connections", "tee", "upgrade-insecure-requests", "keep-alive2"] {
            #expect(HeaderRewriter.http2ResponseField(name: name, value: "v") != nil, "\(name)")
        }
    }

    @Test(arguments: ["x a", ":status", "x:a", "", "x\u{0}a", "x(a)", "caf\u{E9}"])
    func namesThatAreNotTokensAreDropped(name: String) {
        #expect(HeaderRewriter.http2ResponseField(name: name, value: "v") == nil)
    }

    @Test(arguments: ["a\u{1}b", "a\rb", "a\nb", "a\u{0}b", "a\u{7F}b", "v\r\n"])
    func valuesWithControlBytesAreDropped(value: String) {
        #expect(HeaderRewriter.http2ResponseField(name: "x-a", value: value) == nil)
    }

    @Test func namesAreLoweredAndValuesTrimmed() {
        let field = HeaderRewriter.http2ResponseField(name: "Server", value: " BaseHTTP/0.6 Python/3.11.7 ")
        #expect(field?.name == "server")
        #expect(field?.value == "BaseHTTP/0.6 Python/3.11.7")
        #expect(HeaderRewriter.http2ResponseField(name: "x-a", value: "a\tb")?.value == "a\tb")
        // obs-text is not refused by HTTP/2 (nghttp2 accepts it).
        #expect(HeaderRewriter.http2ResponseField(name: "x-a", value: "caf\u{E9}")?.value == "caf\u{E9}")
        #expect(HeaderRewriter.http2ResponseField(name: "x-empty", value: "  ")?.value == "")
    }
}
