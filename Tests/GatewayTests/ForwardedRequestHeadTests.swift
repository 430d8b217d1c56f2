import NIOCore
import NIOHTTP1
import Testing
@testable import Gateway

/// `ForwardedRequestHead` writes the upstream head straight from the client's head; it must write
/// exactly what `HeaderRewriter.upstreamRequest` builds, encoded. A seeded generator makes heads
/// full of the fields the rules are about (hop-by-hop, `Connection` naming more, spoofable
/// forwarding fields from trusted and untrusted peers, the gateway's own, traces, claims).
@Suite struct ForwardedRequestHeadTests {
    /// The reference: the rewritten `HTTPRequestHead`, encoded as the upstream encoder writes it.
    static func reference(_ forwarded: ForwardedRequestHead) -> String {
        let head = forwarded.head
        var text = "\(head.method.rawValue) \(head.uri) HTTP/1.1\r\n"
        for (name, value) in head.headers { text += "\(name): \(value)\r\n" }
        return text + "\r\n"
    }

    static func direct(_ forwarded: ForwardedRequestHead) -> String {
        var buffer = ByteBuffer(string: "left alone|")
        forwarded.write(to: &buffer)
        return String(String(buffer: buffer).dropFirst("left alone|".count))
    }

    /// The same cases on every run.
    struct Generator {
        var splitMix: SplitMix64
        init(state: UInt64) { self.splitMix = SplitMix64(seed: state) }
        mutating func next() -> UInt64 { self.splitMix.next() }
        mutating func below(_ bound: Int) -> Int { Int(self.next() % UInt64(bound)) }
        mutating func pick<T>(_ items: [T]) -> T { items[self.below(items.count)] }
        mutating func chance(_ percent: Int) -> Bool { self.below(100) < percent }
    }

    static let names = [
        "Host", "host", "Connection", "connection", "Keep-Alive", "TE", "Transfer-Encoding", "Upgrade", "Proxy-Connection",
        "Expect", "Proxy-Authorization", "X-Forwarded-For", "x-forwarded-for", "Forwarded", "X-Real-IP", "CF-Connecting-IP",
        "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Request-Id", "Content-Length", "content-length",
        "Traceparent", "Tracestate", "User-Agent", "Accept", "Cookie", "Authorization", "X-User-Id", "x-user-role",
        "X-Secret", "X-Custom", "Via",
    ]
    static let values = [
        "close", "keep-alive", "x-secret", "keep-alive, X-Secret", "Upgrade", "  spaced value ", "10", "0", "203.0.113.9",
        "198.51.100.1, 203.0.113.7", "", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "rojo=1",
        "BarberPro/2.4 (iPhone; iOS 17.1) with a long enough value for heap storage", "ünïcode",
    ]

    static func randomHead(_ random: inout Generator) -> ForwardedRequestHead {
        var headers = HTTPHeaders()
        for _ in 0..<random.below(14) { headers.add(name: random.pick(Self.names), value: random.pick(Self.values)) }
        let method = random.pick([HTTPMethod.GET, .POST, .HEAD, .PUT, .DELETE, .OPTIONS, .RAW(value: "PROPFIND")])
        let version = random.pick([HTTPVersion.http1_1, .http1_0, HTTPVersion(major: 2, minor: 0)])
        let client = HTTPRequestHead(version: version, method: method, uri: random.pick(["/api/bookings?day=1", "/", "*", "/a%20b"]), headers: headers)
        let trace: TraceContext? = random.pick([
            nil, TraceContext(traceparent: nil), TraceContext(traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ])
        let info = ForwardingInfo(
            peer: random.pick(["203.0.113.5", "::1"]), peerTrusted: random.chance(40),
            requestID: random.pick(["gw-00000000000000000000000a", "client-chosen-id"]), scheme: random.pick(["https", "http"]),
            host: random.pick([nil, "api.barberpro.com.ar"]), fallbackHost: "10.0.0.1:3001",
            addedHeaders: Array([("x-user-id", "42"), ("x-user-role", "barber")].prefix(random.below(3))), trace: trace
        )
        let framing = random.pick([BodyFraming.none, .contentLength(random.below(1 << 40)), .chunked, .contentLength(0)])
        let removing: FieldNameSet = random.chance(50) ? [] : ["x-user-id", "x-user-role"]
        return ForwardedRequestHead(client: RequestHead(client), framing: framing, info: info, removing: removing)
    }

    @Test func writesExactlyWhatTheRewriteBuilds() {
        var random = Generator(state: 0x6261_7262_6572)
        var secondPasses = 0
        for _ in 0..<3_000 {
            let forwarded = Self.randomHead(&random)
            if HeaderRewriter.connectionTokens(forwarded.client.headers).map({ $0.contains("x-secret") }) == true { secondPasses += 1 }
            let (expected, written) = (Self.reference(forwarded), Self.direct(forwarded))
            #expect(written == expected)
            if written != expected { return }
        }
        #expect(secondPasses > 100, "the generator must reach the second pass (a Connection field naming more)")
    }

    @Test func aTypicalHeadLiterally() {
        let client = HTTPRequestHead(
            version: .http1_1, method: .POST, uri: "/api/bookings",
            headers: ["Host": "api.barberpro.com.ar", "Connection": "keep-alive", "X-Forwarded-For": "6.6.6.6", "Content-Length": "2", "Accept": "*/*"]
        )
        let trace = TraceContext(traceIDHigh: 1, traceIDLow: 2, parentSpanID: 0, spanID: 3, flags: 1)
        let info = ForwardingInfo(peer: "203.0.113.5", requestID: "req-1", scheme: "https", host: "api.barberpro.com.ar", fallbackHost: "x", trace: trace)
        let forwarded = ForwardedRequestHead(client: RequestHead(client), framing: .contentLength(2), info: info, removing: [])
        #expect(Self.direct(forwarded) == """
            POST /api/bookings HTTP/1.1\r
            Host: api.barberpro.com.ar\r
            Accept: */*\r
            content-length: 2\r
            x-forwarded-for: 203.0.113.5\r
            x-forwarded-proto: https\r
            x-forwarded-host: api.barberpro.com.ar\r
            x-request-id: req-1\r
            traceparent: 00-00000000000000010000000000000002-0000000000000003-01\r
            \r

            """)
    }

    @Test func aHeadFarBeyondTheKeptBufferIsWrittenWhole() {
        var headers = HTTPHeaders()
        for index in 0..<200 { headers.add(name: "x-field-\(index)", value: String(repeating: "v", count: 500)) }
        headers.add(name: "X-Forwarded-For", value: String(repeating: "1.2.3.4, ", count: 300) + "5.6.7.8")
        let client = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/" + String(repeating: "p", count: 4000), headers: headers)
        let info = ForwardingInfo(peer: "203.0.113.5", peerTrusted: true, requestID: "r", scheme: "https", fallbackHost: "x")
        let forwarded = ForwardedRequestHead(client: RequestHead(client), framing: .chunked, info: info, removing: [])
        #expect(Self.direct(forwarded) == Self.reference(forwarded))
    }
}
