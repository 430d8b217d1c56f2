import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import Gateway

@Suite("Response source (why a response happened)")
struct ResponseSourceTests {
    /// Errors share their fields until one is edited: editing a copy (the exchange stamps its
    /// trace, a reset becomes `upstream_reset`, a 429 gains its fields) never changes the shared
    /// static error or another copy.
    @Test func editingAnErrorLeavesItsCopiesAlone() {
        var edited = GatewayError.upstreamUnavailable
        edited.sourceOverride = .upstreamReset
        edited.headers.append(("retry-after", "1"))
        edited.message = "changed"
        #expect(GatewayError.upstreamUnavailable.sourceOverride == nil)
        #expect(GatewayError.upstreamUnavailable.headers.isEmpty)
        #expect(GatewayError.upstreamUnavailable.message != "changed")
        #expect(edited.source == .upstreamReset && edited.headers.count == 1 && edited.message == "changed")
        let copy = edited
        edited.closesConnection = true
        #expect(!copy.closesConnection && edited.closesConnection)
    }

    @Test func everyGatewayErrorNamesItsSource() {
        let expected: [(GatewayError, String)] = [
            (.notFound, "gateway:no_route"),
            (.methodNotAllowed(allow: ["GET"]), "gateway:method_not_allowed"),
            (.badRequest("x"), "gateway:bad_request"),
            (.headersTooLarge, "gateway:bad_request"),
            (.payloadTooLarge, "gateway:payload_too_large"),
            (.requestTimeout, "gateway:request_timeout"),
            (.bodyTimeout, "gateway:request_timeout"),
            (.missingToken, "gateway:auth"),
            (.invalidToken(category: "expired"), "gateway:auth"),
            (.forbidden(claim: "role"), "gateway:auth"),
            (.corsRejected, "gateway:cors"),
            (.rateLimited([]), "gateway:rate_limited"),
            (.rateLimiterUnavailable, "gateway:rate_limiter_unavailable"),
            (.noHealthyUpstream, "gateway:no_healthy_upstream"),
            (.upstreamBusy, "gateway:upstream_busy"),
            (.upstreamUnavailable, "gateway:upstream_connect"),
            (.badUpstreamResponse, "gateway:upstream_protocol"),
            (.upstreamTimeout, "gateway:upstream_timeout"),
        ]
        for (error, name) in expected {
            #expect(error.source.name == name, "\(error)")
            #expect(error.response(requestID: "r", allocator: ByteBufferAllocator()).source.name == name)
        }
        var reset = GatewayError.upstreamUnavailable
        reset.sourceOverride = .upstreamReset
        #expect(reset.source.name == "gateway:upstream_reset")
        // The override does not change what the client sees.
        #expect(reset == .upstreamUnavailable)
    }

    @Test func namesAreUniqueAndPrefixed() {
        let names = ResponseSource.allCases.map(\.name)
        #expect(Set(names).count == names.count)
        #expect(names.allSatisfy { $0 == "upstream" || $0.hasPrefix("gateway:") })
    }

    @Test func aResponseCutShortIsTheClientsUnlessTheUpstreamBrokeItOff() {
        #expect(ResponseSource.settled(nil, responseComplete: false) == .clientAbort)
        #expect(ResponseSource.settled(.upstream, responseComplete: false) == .clientAbort)
        #expect(ResponseSource.settled(.upstream, responseComplete: true) == .upstream)
        #expect(ResponseSource.settled(.upstreamReset, responseComplete: false) == .upstreamReset)
        #expect(ResponseSource.settled(.noRoute, responseComplete: true) == .noRoute)

        var record = RequestRecord(method: .GET, target: "/", version: .http1_1)
        record.settle(responseComplete: false, exchange: nil)
        #expect(record.status == 499 && record.source == .clientAbort)
    }

    @Test func accessLogLineSaysWhyAndWhoAsked() throws {
        var record = AccessLogRecord(
            time: Date(timeIntervalSince1970: 1_790_000_000), requestID: "r1", clientIP: "203.0.113.7", method: "GET",
            route: "api", path: "/api/bookings", status: 502, bytesIn: 0, bytesOut: 120, durationSeconds: 0.01,
            upstreamSeconds: 0.002, protocolName: "HTTP/1.1", tlsVersion: nil, rateLimit: nil, subjectHash: nil,
            upstreamEndpoint: "127.0.0.1:3001"
        )
        record.source = .upstreamProtocol
        record.host = "api.barberpro.test"
        record.userAgent = "Mozilla/5.0 \"quoted\" " + String(repeating: "é", count: 300)
        record.upstreamStatus = 101
        record.trace = TraceContext(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(record.json().utf8)) as? [String: Any])
        #expect(object["source"] as? String == "gateway:upstream_protocol")
        #expect(object["host"] as? String == "api.barberpro.test")
        #expect(object["upstream_status"] as? Int == 101)
        #expect(object["upstream"] as? String == "127.0.0.1:3001")
        #expect(object["trace_id"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(object["parent_span_id"] as? String == "00f067aa0ba902b7")
        #expect(object["sampled"] as? Bool == true)
        let agent = try #require(object["user_agent"] as? String)
        #expect(agent.hasPrefix("Mozilla/5.0 \"quoted\" é"))
        // Truncated at a character boundary: `é` is two bytes, so 255 of the 256 allowed.
        #expect(agent.utf8.count <= AccessLogRecord.userAgentLimit && agent.utf8.count >= AccessLogRecord.userAgentLimit - 1)
        #expect(agent.unicodeScalars.last == "é")
    }

    @Test func requestsTotalHasASourceLabel() {
        let metrics = GatewayMetrics()
        metrics.recordRequest(route: "api", method: .GET, status: 503, version: .http1_1, source: .noHealthyUpstream, seconds: 0.001, upstreamSeconds: nil)
        metrics.recordRequest(route: "api", method: .GET, status: 503, version: .http1_1, source: .upstream, seconds: 0.001, upstreamSeconds: 0.001)
        metrics.recordRequest(route: "api", method: .GET, status: 503, version: .http1_1, source: .upstream, seconds: 0.001, upstreamSeconds: 0.001)
        let text = metrics.render()
        #expect(text.contains(#"gateway_requests_total{route="api",method="GET",status="503",protocol="HTTP/1.1",source="gateway:no_healthy_upstream"} 1"#))
        #expect(text.contains(#"gateway_requests_total{route="api",method="GET",status="503",protocol="HTTP/1.1",source="upstream"} 2"#))
    }

    @Test func endpointSeriesAndPoolGauges() {
        let endpoint = UpstreamEndpoint(host: "127.0.0.1", port: 3001)
        let cluster = UpstreamCluster(name: "booking", endpoints: [endpoint], settings: UpstreamSettings(
            connectTimeout: .seconds(1), responseTimeout: .seconds(1), maxConnections: 8, idleTimeout: .seconds(4)
        ))
        endpoint.stats.response(status: 200, seconds: 0.0004)
        endpoint.stats.response(status: 204, seconds: 0.002)
        endpoint.stats.response(status: 503, seconds: 0.002)
        endpoint.stats.error(.timeout)
        endpoint.openConnections.store(3, ordering: .relaxed)
        endpoint.outstanding.store(1, ordering: .relaxed)
        let text = GatewayMetrics.renderEndpoints([cluster])
        let labels = #"upstream="booking",endpoint="127.0.0.1:3001""#
        #expect(text.contains("gateway_upstream_endpoint_requests_total{\(labels),class=\"2xx\"} 2\n"))
        #expect(text.contains("gateway_upstream_endpoint_requests_total{\(labels),class=\"5xx\"} 1\n"))
        #expect(text.contains("gateway_upstream_endpoint_errors_total{\(labels),kind=\"timeout\"} 1\n"))
        #expect(text.contains("gateway_upstream_endpoint_errors_total{\(labels),kind=\"connect\"} 0\n"))
        #expect(text.contains("gateway_upstream_endpoint_duration_seconds_bucket{\(labels),le=\"0.0005\"} 1\n"))
        #expect(text.contains("gateway_upstream_endpoint_duration_seconds_count{\(labels)} 3\n"))
        #expect(text.contains("gateway_upstream_connections{\(labels),state=\"open\"} 3\n"))
        #expect(text.contains("gateway_upstream_connections{\(labels),state=\"in_use\"} 1\n"))
    }

    @Test func pendingRequestsGaugeFollowsThePoolsWaiters() throws {
        let loop = EmbeddedEventLoop()
        let endpoint = UpstreamEndpoint(host: "127.0.0.1", port: 3001)
        let settings = UpstreamSettings(connectTimeout: .seconds(1), responseTimeout: .seconds(5), maxConnections: 1, idleTimeout: .seconds(4))
        let pool = UpstreamConnectionPool(eventLoop: loop) { _, _, handler in
            let channel = EmbeddedChannel(loop: loop)
            do {
                try UpstreamConnectionPool.addHandlers(to: channel, ending: handler)
                try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3001)).wait()
            } catch {
                return loop.makeFailedFuture(error)
            }
            return loop.makeSucceededFuture(channel)
        }
        var results: [Result<UpstreamConnection, any Error>?] = [nil, nil, nil]
        for index in 0..<3 {
            pool.acquire(endpoint, settings: settings).assumeIsolated().whenComplete { results[index] = $0 }
        }
        let first = try #require(results[0]).get()
        #expect(results[1] == nil && results[2] == nil)
        #expect(endpoint.stats.waiting.load(ordering: .relaxed) == 2)
        pool.release(first, reusable: true, timeouts: settings.timeouts)
        #expect(try #require(results[1]).get() === first)
        #expect(endpoint.stats.waiting.load(ordering: .relaxed) == 1)
        // The last one gives up after `connect_timeout` (503 upstream_busy).
        loop.advanceTime(by: .seconds(1))
        #expect(throws: UpstreamAcquireError.self) { try #require(results[2]).get() }
        #expect(endpoint.stats.waiting.load(ordering: .relaxed) == 0)
        let cluster = UpstreamCluster(name: "booking", endpoints: [endpoint], settings: settings)
        #expect(GatewayMetrics.renderEndpoints([cluster]).contains(
            #"gateway_upstream_pending_requests{upstream="booking",endpoint="127.0.0.1:3001"} 0"# + "\n"
        ))
    }

    // MARK: - Through the HTTP/1.1 handler

    /// `/api/` goes to `booking`, whose only endpoint is ejected: an exchange fails 503 as it starts.
    static func makeChannel() throws -> (EmbeddedChannel, HTTP1ServerHandler, Observability) {
        let config = try ConfigFixture().parse(minimalYAML + """
            upstreams:
              booking: { endpoints: [127.0.0.1:9] }
            routes:
              - { name: api, match: { path_prefix: /api/ }, upstream: booking }
            """)
        let runtime = try GatewayBuilder.runtime(config, configHash: "test")
        for endpoint in runtime.clusters["booking"]!.endpoints {
            endpoint.record5xx(threshold: 1, base: .seconds(600), now: .now())
        }
        let channel = EmbeddedChannel()
        let observability = Observability(accessLog: false)
        let services = ConnectionServices(
            holder: RuntimeHolder(runtime), listener: ListenerInfo(name: "main", role: .proxy, isTLS: false),
            loop: LoopResources(eventLoop: channel.embeddedEventLoop), observability: observability
        )
        let handler = HTTP1ServerHandler(services: services)
        let pipeline = channel.pipeline.syncOperations
        try pipeline.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, handler, observability)
    }

    static func count(_ observability: Observability, status: Int, source: String, route: String = "api") -> Int {
        let prefix = #"gateway_requests_total{route="\#(route)",method="GET",status="\#(status)",protocol="HTTP/1.1",source="\#(source)"} "#
        for line in observability.metrics.render().split(separator: "\n") where line.hasPrefix(prefix) {
            return Int(line.dropFirst(prefix.count)) ?? -1
        }
        return 0
    }

    /// What the handler wrote, once the loop's tick is over (a response's end is flushed then).
    static func output(_ channel: EmbeddedChannel) throws -> String {
        channel.embeddedEventLoop.run()
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
        return text
    }

    @Test func gatewayMadeResponsesAreCountedByTheirSource() throws {
        let (channel, handler, observability) = try Self.makeChannel()
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        channel.pipeline.fireChannelRead(ByteBuffer(string: "GET /nowhere HTTP/1.1\r\nHost: x\r\ntraceparent: \(traceparent)\r\n\r\n"))
        let notFound = try Self.output(channel)
        #expect(notFound.hasPrefix("HTTP/1.1 404"))
        #expect(notFound.contains(#""trace_id":"0af7651916cd43dd8448eb211c80319c""#))
        #expect(Self.count(observability, status: 404, source: "gateway:no_route", route: "-") == 1)

        // Held pending (no read-complete), then answered as the exchange would on a timeout.
        channel.pipeline.fireChannelRead(ByteBuffer(string: "GET /api/a HTTP/1.1\r\nHost: x\r\n\r\n"))
        let exchange = try #require(handler.currentExchange)
        handler.sendErrorResponse(for: exchange, .upstreamTimeout)
        #expect(try Self.output(channel).hasPrefix("HTTP/1.1 504"))
        #expect(Self.count(observability, status: 504, source: "gateway:upstream_timeout") == 1)

        // Started for real: the only endpoint is ejected.
        channel.pipeline.fireChannelRead(ByteBuffer(string: "GET /api/b HTTP/1.1\r\nHost: x\r\n\r\n"))
        channel.pipeline.fireChannelReadComplete()
        let unavailable = try Self.output(channel)
        #expect(unavailable.hasPrefix("HTTP/1.1 503"))
        // The exchange put the request's (started) trace into the body.
        #expect(unavailable.contains(#""trace_id":""#))
        #expect(Self.count(observability, status: 503, source: "gateway:no_healthy_upstream") == 1)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test func aClientThatLeavesBeforeItsResponseIsAClientAbort() throws {
        let (channel, handler, observability) = try Self.makeChannel()
        channel.pipeline.fireChannelRead(ByteBuffer(string: "GET /api/slow HTTP/1.1\r\nHost: x\r\n\r\n"))
        #expect(handler.currentExchange != nil)
        channel.pipeline.fireChannelInactive()
        #expect(Self.count(observability, status: 499, source: "gateway:client_abort") == 1)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }
}
