import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import Gateway

/// Issue 10 items 4 and 6 through the HTTP/1.1 handlers on an `EmbeddedChannel`: bytes in, bytes
/// out, no sockets and no upstream (nothing here may reach one).
@Suite("HTTP/1.1 handler: refused paths and counted refusals")
struct HardeningPolicyHandlerTests {
    let runtime: GatewayRuntime

    init() throws {
        let config = try ConfigFixture().parse(minimalYAML + """
            \(AuthenticationTests.section)
            rate_limits:
              policies:
                per_ip: { limit: 5, window: 15m, key: client_ip }
            upstreams:
              booking: { endpoints: [127.0.0.1:9] }
            routes:
              - { name: secure, match: { path_prefix: /secure/ }, upstream: booking, auth: required, rate_limits: [per_ip] }
              - { name: api, match: { path_prefix: /api/ }, upstream: booking }
            """)
        runtime = try GatewayBuilder.runtime(config, configHash: "test")
    }

    func channel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        let services = ConnectionServices(
            holder: RuntimeHolder(runtime), listener: ListenerInfo(name: "public", role: .proxy, isTLS: false),
            loop: LoopResources(eventLoop: channel.eventLoop), observability: Observability(accessLog: false)
        )
        try HTTP1Pipeline.configure(channel.pipeline.syncOperations, services: services)
        try channel.connect(to: SocketAddress(ipAddress: "203.0.113.7", port: 40000)).wait()
        return channel
    }

    /// Sends one request and returns the lines of the response head.
    func exchange(_ channel: EmbeddedChannel, _ request: String) throws -> [String] {
        try channel.writeInbound(ByteBuffer(string: request))
        channel.embeddedEventLoop.run()
        var text = ""
        while var part = try channel.readOutbound(as: ByteBuffer.self) {
            text += part.readString(length: part.readableBytes) ?? ""
        }
        let head = text.components(separatedBy: "\r\n\r\n").first ?? ""
        return head.components(separatedBy: "\r\n")
    }

    func field(_ lines: [String], _ name: String) -> String? {
        lines.dropFirst().first { $0.lowercased().hasPrefix(name + ":") }
            .map { String($0.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces) }
    }

    @Test func fiveRefusedTokensThenTooManyRequests() throws {
        let channel = try self.channel()
        defer { _ = try? channel.finish() }
        var statuses: [String] = []
        var remaining: [String?] = []
        for index in 0..<7 {
            let token = index % 2 == 0 ? "" : "Authorization: Bearer not.a.token\r\n"
            let lines = try exchange(channel, "GET /secure/x HTTP/1.1\r\nHost: a\r\n\(token)\r\n")
            statuses.append(lines.first ?? "")
            remaining.append(field(lines, "ratelimit-remaining"))
        }
        #expect(statuses == Array(repeating: "HTTP/1.1 401 Unauthorized", count: 5)
            + Array(repeating: "HTTP/1.1 429 Too Many Requests", count: 2))
        #expect(remaining.prefix(5) == ["4", "3", "2", "1", "0"])
    }

    @Test(arguments: ["/api/..%2Fsecure/x", "/api/%2e%2e%5Csecure", "/api/..;/secure/x", "/api/%252e%252e/x"])
    func encodedDotSegmentIs400BeforeRouting(_ path: String) throws {
        let channel = try self.channel()
        defer { _ = try? channel.finish() }
        let lines = try exchange(channel, "GET \(path) HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(lines.first == "HTTP/1.1 400 Bad Request")
        // Framing is no longer trusted after a 400: the connection closes.
        #expect(!channel.isActive)
    }
}
