import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
@testable import Gateway

/// A stand-in for the server behind the admin listener (reload and dump are not under test here).
private struct StubAdmin: AdminControl {
    func reloadFromFile() -> Result<String, ConfigErrors> { .failure(ConfigErrors(errors: [])) }
    func runningConfigJSON() -> String { "{}" }
}

@Suite struct OperationsAdminEndpointTests {
    static let yaml = minimalYAML + """
        upstreams:
          booking: { endpoints: [127.0.0.1:9, 127.0.0.1:10] }
        routes:
          - { name: api, match: { path_prefix: /api/ }, upstream: booking }
        """

    /// An admin-listener connection: HTTP/1.1 through the real handler.
    static func adminChannel(_ runtime: GatewayRuntime) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        let services = ConnectionServices(
            holder: RuntimeHolder(runtime), listener: ListenerInfo(name: "admin", role: .admin, isTLS: false),
            loop: LoopResources(eventLoop: channel.embeddedEventLoop), observability: Observability(accessLog: false),
            admin: StubAdmin()
        )
        try HTTP1Pipeline.configure(channel.pipeline.syncOperations, services: services)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    /// Sends one request and returns the status line and body of the answer.
    static func exchange(_ channel: EmbeddedChannel, _ method: String, _ path: String) throws -> (String, String) {
        try channel.writeInbound(ByteBuffer(string: "\(method) \(path) HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n"))
        channel.embeddedEventLoop.run()  // the response is flushed at the end of the tick
        var out = ""
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) { out += buffer.readString(length: buffer.readableBytes) ?? "" }
        let status = out.components(separatedBy: "\r\n").first ?? ""
        let body = out.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
        return (status, body)
    }

    @Test func healthFailAndOkFlipReadinessOnly() throws {
        let runtime = try GatewayBuilder.runtime(ConfigFixture().parse(Self.yaml), configHash: "test")
        runtime.status.listenersBound.store(true, ordering: .relaxed)
        let channel = try Self.adminChannel(runtime)
        #expect(try Self.exchange(channel, "GET", "/health/ready").0 == "HTTP/1.1 200 OK")
        #expect(try Self.exchange(channel, "POST", "/health/fail").0 == "HTTP/1.1 200 OK")
        let (status, body) = try Self.exchange(channel, "GET", "/health/ready")
        #expect(status == "HTTP/1.1 503 Service Unavailable")
        #expect(body.contains("failed by POST /health/fail"))
        #expect(try Self.exchange(channel, "GET", "/health/live").0 == "HTTP/1.1 200 OK")
        #expect(try Self.exchange(channel, "POST", "/health/ok").0 == "HTTP/1.1 200 OK")
        #expect(try Self.exchange(channel, "GET", "/health/ready").0 == "HTTP/1.1 200 OK")
    }

    @Test func endpointDrainSurvivesAReload() throws {
        let config = try ConfigFixture().parse(Self.yaml)
        let runtime = try GatewayBuilder.runtime(config, configHash: "test")
        let channel = try Self.adminChannel(runtime)
        let (status, body) = try Self.exchange(channel, "POST", "/upstreams/booking/endpoints/127.0.0.1%3A9/drain")
        #expect(status == "HTTP/1.1 200 OK")
        #expect(body == #"{"upstream":"booking","endpoint":"127.0.0.1:9","drained":true}"#)
        let endpoints = runtime.clusters["booking"]!.endpoints
        #expect(endpoints.map { $0.isUp(now: .now()) } == [false, true])
        // A reload builds new endpoints from the same status: the drain carries over.
        let reloaded = try GatewayBuilder.runtime(config, configHash: "test2", status: runtime.status)
        #expect(reloaded.clusters["booking"]!.endpoints.map { $0.isUp(now: .now()) } == [false, true])
        #expect(try Self.exchange(channel, "DELETE", "/upstreams/booking/endpoints/127.0.0.1:9/drain").0 == "HTTP/1.1 200 OK")
        #expect(endpoints.allSatisfy { $0.isUp(now: .now()) })
        #expect(try Self.exchange(channel, "POST", "/upstreams/booking/endpoints/127.0.0.1:11/drain").0 == "HTTP/1.1 404 Not Found")
        #expect(try Self.exchange(channel, "POST", "/upstreams/nope/endpoints/127.0.0.1:9/drain").0 == "HTTP/1.1 404 Not Found")
    }

    @Test func drainTargetParsing() {
        #expect(AdminOperations.endpointDrainTarget("/upstreams/a/endpoints/h:1/drain")! == ("a", "h:1"))
        #expect(AdminOperations.endpointDrainTarget("/upstreams/a/endpoints/%5B%3A%3A1%5D%3A8080/drain")! == ("a", "[::1]:8080"))
        #expect(AdminOperations.endpointDrainTarget("/upstreams//endpoints/h:1/drain") == nil)
        #expect(AdminOperations.endpointDrainTarget("/upstreams/a/endpoints/h:1/drain/x") == nil)
        #expect(AdminOperations.endpointDrainTarget("/upstreams/a/endpoint/h:1/drain") == nil)
    }

    @Test func drainingMakesReadinessFail() throws {
        let runtime = try GatewayBuilder.runtime(ConfigFixture().parse(Self.yaml), configHash: "test")
        runtime.status.listenersBound.store(true, ordering: .relaxed)
        #expect(Health.notReadyReasons(runtime).isEmpty)
        runtime.status.operations.draining.store(true, ordering: .relaxed)
        #expect(Health.notReadyReasons(runtime) == ["draining"])
    }
}

@Suite struct OperationsConfigTests {
    @Test func drainDelayDefaultsAndBounds() throws {
        let fixture = try ConfigFixture()
        #expect(try fixture.parse(minimalYAML).timeouts.drainDelay == .seconds(5))
        #expect(try fixture.parse(minimalYAML + "timeouts: { drain_delay: 0s }\n").timeouts.drainDelay == .zero)
        fixture.expectError(minimalYAML + "timeouts: { drain_delay: 6m }\n", "timeouts.drain_delay: must be at most 5m, got '6m'")
        fixture.expectError(minimalYAML + "timeouts: { drain_dealy: 1s }\n", "timeouts.drain_dealy: unknown key (did you mean 'drain_delay'?)")
    }

    @Test func logLevelAndFormat() throws {
        let fixture = try ConfigFixture()
        let log = try fixture.parse(minimalYAML + "log: { level: warning, format: json }\n").log
        #expect(log.level == .warning && log.format == .json && log.access)
        #expect(try fixture.parse(minimalYAML).log.level == .info)
        fixture.expectError(minimalYAML + "log: { level: warn }\n", "log.level: unknown value 'warn' (did you mean 'warning'?)")
        fixture.expectError(minimalYAML + "log: { format: xml }\n", "log.format: expected one of text, json, got 'xml'")
    }

    @Test func yamlKeyNames() {
        #expect(ConfigDump.yamlKey("redirectToHTTPS") == "redirect_to_https")
        #expect(ConfigDump.yamlKey("clientIP") == "client_ip")
        #expect(ConfigDump.yamlKey("exemptCIDRs") == "exempt_cidrs")
        #expect(ConfigDump.yamlKey("jwksURL") == "jwks_url")
        #expect(ConfigDump.yamlKey("maxHeaderListSize") == "max_header_list_size")
        #expect(ConfigDump.yamlKey("consecutive5xx") == "consecutive_5xx")
        #expect(ConfigDump.yamlKey("http2") == "http2")
    }

    @Test func configDumpHasNoSwiftNames() throws {
        let config = try ConfigFixture().parse(OperationsAdminEndpointTests.yaml)
        let json = ConfigDump.json(config)
        #expect(json.contains(#""client_ip":"#) && json.contains(#""drain_delay":"#))
        #expect(!json.contains("clientIP") && !json.contains("upstreamIndex") && !json.contains("Indices"))
    }

    @Test func lineLocator() {
        let text = """
            listeners:
              - name: main
                address: 127.0.0.1:0
                tls:
                  certificates:
                    - cert: a.crt
                      key: a.key
            upstreams:
              booking:
                endpoints: [127.0.0.1:9]
                response_timeot: 2s
            """
        #expect(ConfigLineLocator.line(for: "listeners[0].tls.certificates[0]", in: text) == 6)
        #expect(ConfigLineLocator.line(for: "listeners[0].tls.certificates[0].key", in: text) == 7)
        #expect(ConfigLineLocator.line(for: "upstreams.booking.response_timeot", in: text) == 11)
        // A path that goes past the document stops at the deepest node found.
        #expect(ConfigLineLocator.line(for: "upstreams.booking.retries.attempts", in: text) == 9)
        #expect(ConfigLineLocator.line(for: "x", in: "not: [valid") == nil)
    }
}
