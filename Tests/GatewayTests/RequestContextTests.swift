import NIOCore
import NIOHTTP1
import Testing
@testable import Gateway

/// `RequestContext` is the exchange's one response filter: whatever answers a proxied request (the
/// upstream, or a cached entry), the client's head carries the same request id, HSTS, CORS and
/// rate-limit fields, each once.
@Suite struct RequestContextTests {
    static func context(hsts: Bool = true) -> RequestContext {
        var additions = ResponseAdditions()
        additions.corsEnabled = true
        additions.headers = [("access-control-allow-origin", "https://app.barberpro.com.ar")]
        return RequestContext(
            requestID: "gw-req-7", trace: nil, method: .GET, clientVersion: .http1_1, addHSTS: hsts, responseAdditions: additions
        )
    }

    static let upstreamHead = HTTPResponseHead(version: .http1_1, status: .ok, headers: [
        "content-length": "2", "x-request-id": "spoofed", "access-control-allow-origin": "*", "connection": "keep-alive",
    ])

    static func values(_ head: HTTPResponseHead, _ name: String) -> [String] { head.headers[name] }

    @Test func theUpstreamsHeadAndACachedOneAreFilteredAlike() {
        var context = Self.context()
        context.addRateLimitFields([("ratelimit-limit", "100"), ("ratelimit-remaining", "99")])
        let (forwarded, forwardedFraming) = context.forwarded(UpstreamResponseHead(Self.upstreamHead)).built
        let (cached, cachedFraming) = context.rewritten(Self.upstreamHead)
        for head in [forwarded, cached] {
            #expect(Self.values(head, "x-request-id") == ["gw-req-7"])
            #expect(Self.values(head, "access-control-allow-origin") == ["https://app.barberpro.com.ar"])
            #expect(Self.values(head, "strict-transport-security").count == 1)
            #expect(Self.values(head, "ratelimit-limit") == ["100"])
            #expect(Self.values(head, "ratelimit-remaining") == ["99"])
            #expect(Self.values(head, "connection").isEmpty)
            #expect(Self.values(head, "vary").contains { $0.lowercased().contains("origin") })
        }
        #expect(forwarded.headers.map { "\($0.name)=\($0.value)" } == cached.headers.map { "\($0.name)=\($0.value)" })
        #expect(forwardedFraming == cachedFraming)
    }

    @Test func rateLimitFieldsAddToTheOnesAlreadyThere() {
        var context = Self.context(hsts: false)
        context.responseAdditions.extraHeaders = [("x-first", "1")]
        context.addRateLimitFields([("ratelimit-limit", "100")])
        context.addRateLimitFields([])
        #expect(context.responseAdditions.extraHeaders.map(\.0) == ["x-first", "ratelimit-limit"])
        let (head, _) = context.rewritten(Self.upstreamHead)
        #expect(Self.values(head, "strict-transport-security").isEmpty)  // a plain-HTTP listener's
        #expect(Self.values(head, "x-first") == ["1"])
    }
}
