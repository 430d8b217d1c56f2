import NIOCore
import NIOHTTP1
import Testing
@testable import Gateway

/// `ForwardedResponseHead` writes the client's response head straight from the upstream's; it must
/// write exactly what `HeaderRewriter.clientResponse` builds (plus `Connection: close` when the
/// connection ends), encoded, with the same framing.
@Suite struct ForwardedResponseHeadTests {
    static func reference(_ forwarded: ForwardedResponseHead, close: Bool) -> (String, HeaderRewriter.ResponseFraming) {
        var (head, framing) = forwarded.built
        if close { head.headers.replaceOrAdd(name: "connection", value: "close") }
        var text = "HTTP/\(head.version.major).\(head.version.minor) \(head.status.code) \(head.status.reasonPhrase)\r\n"
        for (name, value) in head.headers { text += "\(name): \(value)\r\n" }
        return (text + "\r\n", framing)
    }

    static func direct(_ forwarded: ForwardedResponseHead, close: Bool) -> (String, HeaderRewriter.ResponseFraming) {
        var buffer = ByteBuffer(string: "kept|")
        let framing = forwarded.write(to: &buffer, close: close)
        return (String(String(buffer: buffer).dropFirst("kept|".count)), framing)
    }

    static let names = [
        "Connection", "connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "content-length", "X-Request-Id", "Vary",
        "vary", "Access-Control-Allow-Origin", "access-control-max-age", "Strict-Transport-Security", "RateLimit-Limit",
        "ratelimit-remaining", "Retry-After", "Content-Type", "Date", "Set-Cookie", "X-Secret", "Server", "Upgrade", "Trailer",
    ]
    static let values = [
        "close", "keep-alive", "X-Secret", "keep-alive, x-secret", "chunked", "12", "  padded  ", "Accept-Encoding",
        "Origin, Accept-Encoding", "*", "text/event-stream", "Mon, 30 Nov 2026 21:00:00 GMT", "max-age=5", "", "ñandú",
    ]
    static let statuses: [HTTPResponseStatus] = [
        .ok, .noContent, .notModified, .switchingProtocols, .init(statusCode: 103), .notFound, .internalServerError,
        .custom(code: 599, reasonPhrase: "Whatever"), .custom(code: 299, reasonPhrase: ""),
    ]

    static func randomHead(_ random: inout ForwardedRequestHeadTests.Generator) -> ForwardedResponseHead {
        var headers = HTTPHeaders()
        for _ in 0..<random.below(12) { headers.add(name: random.pick(Self.names), value: random.pick(Self.values)) }
        let upstream = HTTPResponseHead(version: random.pick([.http1_1, .http1_0]), status: random.pick(Self.statuses), headers: headers)
        var additions = ResponseAdditions()
        if random.chance(50) {
            additions.corsEnabled = true
            if random.chance(70) {
                additions.headers = [("access-control-allow-origin", "https://app.barberpro.com.ar"), ("access-control-allow-credentials", "true")]
            }
        }
        let extras = [("ratelimit-limit", "100"), ("RateLimit-Remaining", "7"), ("ratelimit-limit", "50"), ("retry-after", "60")]
        additions.extraHeaders = (0..<random.below(5)).map { _ in random.pick(extras) }
        return ForwardedResponseHead(
            upstream: UpstreamResponseHead(upstream), requestMethod: random.pick([.GET, .HEAD, .POST]),
            clientVersion: random.pick([.http1_1, .http1_0, HTTPVersion(major: 2, minor: 0)]),
            requestID: random.pick(["gw-00000000000000000000000a", "r"]), addHSTS: random.chance(50), additions: additions
        )
    }

    @Test func writesExactlyWhatTheRewriteBuilds() {
        var random = ForwardedRequestHeadTests.Generator(state: 0x7475_726E_6F73)
        var secondPasses = 0, replacedFields = 0
        for _ in 0..<3_000 {
            let forwarded = Self.randomHead(&random)
            let close = random.chance(30)
            let fields = forwarded.upstream.fields.httpHeaders
            if HeaderRewriter.connectionTokens(fields).map({ $0.contains("x-secret") }) == true { secondPasses += 1 }
            if fields.contains(where: { forwarded.additions.replaces($0.name) }) { replacedFields += 1 }
            let expected = Self.reference(forwarded, close: close), written = Self.direct(forwarded, close: close)
            #expect(written.0 == expected.0)
            #expect(written.1 == expected.1)
            if written.0 != expected.0 || written.1 != expected.1 { return }
        }
        #expect(secondPasses > 100 && replacedFields > 100, "the generator must reach the second pass and the replaced fields")
    }

    /// The forwarding path reads an upstream's field lines as the parser kept them (a slice of the
    /// read buffer); the same head decoded into `HTTPHeaders` must be rewritten to the same bytes.
    @Test func fieldLinesAsReadRewriteLikeTheDecodedHead() {
        var random = ForwardedRequestHeadTests.Generator(state: 0x6C69_6E65_73)
        var compared = 0
        for _ in 0..<3_000 {
            var forwarded = Self.randomHead(&random)
            let decoded = forwarded.upstream.built
            var text = "HTTP/\(decoded.version.major).\(decoded.version.minor) \(decoded.status.code) \(decoded.status.reasonPhrase)\r\n"
            for (name, value) in decoded.headers { text += "\(name): \(value)\r\n" }
            // Heads the strict grammar refuses (two lengths, codings other than chunked) never reach a rewrite.
            var buffer = ByteBuffer(string: "junk" + text + "\r\nbody")
            buffer.moveReaderIndex(forwardBy: 4)
            guard case .parsed(let parsed) = UpstreamResponseHead.parse(buffer, maxHeadBytes: 1 << 20) else { continue }
            guard let lines = parsed.head.fields.lines else {
                Issue.record("the parser keeps the field lines")
                return
            }
            #expect(lines.fieldCount == decoded.headers.count)
            let close = random.chance(30)
            // The parser reads a status's code; its reason phrase is the standard one.
            forwarded.upstream.status = parsed.head.status
            let expected = Self.direct(forwarded, close: close)
            let (expectedBuilt, _) = forwarded.built
            forwarded.upstream = parsed.head
            #expect(Self.direct(forwarded, close: close) == expected)
            #expect(forwarded.built.0.headers == expectedBuilt.headers)
            compared += 1
            if Self.direct(forwarded, close: close) != expected { return }
        }
        #expect(compared > 1_000, "most generated heads must be in the strict grammar")
    }

    /// The gateway's rate-limit fields replace the upstream's of the same name, and of two of its
    /// own the last wins, as `replaceOrAdd` applied in turn did.
    @Test func rateLimitFieldsReplaceTheUpstreamsAndTheLastOfANameWins() {
        var additions = ResponseAdditions()
        additions.extraHeaders = [("ratelimit-limit", "100"), ("retry-after", "60"), ("RateLimit-Limit", "50")]
        let upstream = HTTPResponseHead(
            version: .http1_1, status: .ok,
            headers: ["RateLimit-Limit": "9999", "content-length": "2", "Retry-After": "1", "x-kept": "yes"]
        )
        let (head, _) = HeaderRewriter.clientResponse(upstream, requestMethod: .GET, clientVersion: .http1_1, requestID: "r", addHSTS: false, additions: additions)
        #expect(head.headers.map { "\($0.name): \($0.value)" } == [
            "content-length: 2", "x-kept: yes", "x-request-id: r", "retry-after: 60", "RateLimit-Limit: 50",
        ])
    }

    @Test func aHeadFarBeyondTheKeptBufferIsWrittenWhole() {
        var headers = HTTPHeaders()
        for index in 0..<200 { headers.add(name: "x-field-\(index)", value: String(repeating: "v", count: 500)) }
        for _ in 0..<50 { headers.add(name: "Vary", value: "Accept-Encoding, X-Long-Token-\(String(repeating: "t", count: 100))") }
        var additions = ResponseAdditions()
        additions.corsEnabled = true
        let forwarded = ForwardedResponseHead(
            upstream: UpstreamResponseHead(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers)), requestMethod: .GET,
            clientVersion: .http1_1, requestID: "r", addHSTS: true, additions: additions
        )
        #expect(Self.direct(forwarded, close: true).0 == Self.reference(forwarded, close: true).0)
    }
}
