import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

@testable import Gateway

@Suite("Metrics and access log")
struct ObservabilityTests {
    @Test func prometheusTextHasEverySpecSeriesAndMovingValues() {
        let metrics = GatewayMetrics()
        metrics.recordRequest(route: "api", method: .GET, status: 200, version: .http2, seconds: 0.0003, upstreamSeconds: 0.0002)
        metrics.recordRequest(route: "api", method: .RAW(value: "BREW"), status: 405, version: .http1_1, seconds: 0.02, upstreamSeconds: nil)
        metrics.rateLimitDecisions.increment(["per_ip", "allowed"])
        metrics.connections.set(["public", "h2"], 3)
        let text = metrics.render()
        for series in [
            "gateway_requests_total", "gateway_request_duration_seconds", "gateway_upstream_duration_seconds",
            "gateway_ratelimit_decisions_total", "gateway_jwt_rejections_total", "gateway_redis_errors_total",
            "gateway_connections", "gateway_upstream_endpoint_up", "gateway_config_reloads_total",
        ] {
            #expect(text.contains("# TYPE \(series) "), "\(series)")
        }
        #expect(text.contains(#"gateway_requests_total{route="api",method="GET",status="200",protocol="HTTP/2",source="upstream"} 1"#))
        // Unknown methods do not become label values.
        #expect(text.contains(#"method="OTHER",status="405""#) && !text.contains("BREW"))
        #expect(text.contains(#"gateway_request_duration_seconds_bucket{route="api",le="0.0005"} 1"#))
        #expect(text.contains(#"gateway_request_duration_seconds_bucket{route="api",le="+Inf"} 2"#))
        #expect(text.contains(#"gateway_request_duration_seconds_count{route="api"} 2"#))
        #expect(text.contains(#"gateway_connections{listener="public",protocol="h2"} 3"#))
        #expect(text.contains("gateway_redis_errors_total 0"))
    }

    @Test("A resolved series counts into its family: merged with label-counted values, shown only once counted, kept across resolutions")
    func resolvedSeries() {
        let family = LabeledCounter(labelNames: ["policy", "decision"])
        let allowed = family.series(["per_ip", "allowed"])
        let denied = family.series(["per_ip", "denied"])
        // Resolved but never counted: no series yet, as with label-counted values.
        #expect(family.snapshot().isEmpty)
        allowed.increment()
        allowed.increment()
        family.increment(["per_ip", "allowed"])
        #expect(family.value(["per_ip", "allowed"]) == 3)
        #expect(family.value(["per_ip", "denied"]) == 0)
        // A reload resolves the same labels again: the same series, so the count continues.
        #expect(family.series(["per_ip", "allowed"]) === allowed)
        denied.increment()
        let rows = family.snapshot()
        #expect(rows.map(\.0) == [["per_ip", "allowed"], ["per_ip", "denied"]])
        #expect(rows.map(\.1) == [3, 1])
    }

    @Test func histogramBucketsAreCumulative() {
        let histogram = LatencyHistogram(buckets: [0.001, 0.01, 0.1])
        for value in [0.0005, 0.005, 0.005, 0.05, 5] { histogram.observe(seconds: value) }
        let (cumulative, sum, count) = histogram.snapshot()
        #expect(cumulative == [1, 3, 4])
        #expect(count == 5)
        #expect(abs(sum - 5.0605) < 1e-9)
    }

    @Test("Route series count without a lock: threads recording at once lose nothing, in the table and past it")
    func routeSeriesCountsConcurrently() async {
        let metrics = GatewayMetrics()
        let series = metrics.routeSeries("api")
        // 4 threads × 100 statuses × 50 rounds: more label combinations (100) than table slots
        // (64), so both the compare-exchange slots and the locked overflow are raced.
        await withTaskGroup(of: Void.self) { group in
            for thread in 0..<4 {
                group.addTask {
                    for _ in 0..<50 {
                        for status in 100..<200 {
                            let key = RouteSeries.CountKey(method: .get, status: status, protocolName: .http2, source: .upstream)
                            series.record(key, seconds: Double(thread) * 0.001, upstreamSeconds: status < 150 ? 0.0002 : nil)
                        }
                    }
                }
            }
        }
        let counts = series.countSnapshot()
        #expect(counts.count == 100)
        #expect(counts.allSatisfy { $0.1 == 200 })
        #expect(series.durations.snapshot().count == 20_000)
        #expect(series.upstreamDurations.snapshot().count == 10_000)
        let text = metrics.render()
        #expect(text.contains(#"gateway_requests_total{route="api",method="GET",status="199",protocol="HTTP/2",source="upstream"} 200"#))
        #expect(text.contains(#"gateway_request_duration_seconds_count{route="api"} 20000"#))
    }

    @Test("A route's series is resolved at config load, the same one across reloads; never answered, it is not shown")
    func routeSeriesResolvedAtLoad() throws {
        let metrics = GatewayMetrics()
        let yaml = """
            upstreams:
              booking: { endpoints: [127.0.0.1:9] }
            routes:
              - { name: api, match: { path_prefix: /api/ }, upstream: booking }
              - { name: quiet, match: { path_prefix: /quiet/ }, upstream: booking }
            """
        let first = try GatewayBuilder.runtime(try ConfigFixture().parse(minimalYAML + yaml), configHash: "1", metrics: metrics)
        let reloaded = try GatewayBuilder.runtime(try ConfigFixture().parse(minimalYAML + yaml), configHash: "2", metrics: metrics)
        let api = try #require(first.routes.routes.first { $0.name == "api" }?.series)
        #expect(reloaded.routes.routes.first { $0.name == "api" }?.series === api)
        #expect(api === metrics.routeSeries("api"))
        // Counted through the handle: the name passed along is not looked up.
        metrics.recordRequest(route: "ignored", series: api, method: .GET, status: 200, version: .http1_1, seconds: 0.01, upstreamSeconds: nil)
        let text = metrics.render()
        #expect(text.contains(#"gateway_requests_total{route="api",method="GET",status="200",protocol="HTTP/1.1",source="upstream"} 1"#))
        #expect(!text.contains(#"route="quiet""#) && !text.contains(#"route="ignored""#))
        // No upstream time yet: no upstream histogram for the route.
        #expect(!text.contains(#"gateway_upstream_duration_seconds_count{route="api"}"#))
    }

    @Test func accessLogLineHasFieldsAndNoQueryString() throws {
        let record = AccessLogRecord(
            time: Date(timeIntervalSince1970: 1_790_000_000.25), requestID: "r1", clientIP: "203.0.113.7", method: "GET",
            route: "api", path: "/api/bookings", status: 200, bytesIn: 0, bytesOut: 226, durationSeconds: 0.00042,
            upstreamSeconds: 0.0003, protocolName: "HTTP/2", tlsVersion: "TLSv1.3", rateLimit: "allowed",
            subjectHash: "abcd", upstreamEndpoint: "127.0.0.1:3001"
        )
        let line = record.json()
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["time"] as? String == "2026-09-21T14:13:20.250Z")
        #expect(object["path"] as? String == "/api/bookings")
        #expect(object["status"] as? Int == 200)
        #expect(object["protocol"] as? String == "HTTP/2")
        #expect(Set(object.keys).isSuperset(of: [
            "request_id", "client_ip", "method", "route", "bytes_in", "bytes_out", "duration_s", "upstream_s",
            "tls_version", "rate_limit", "subject_hash", "upstream",
        ]))
    }

    @Test func writerDropsInsteadOfBlockingWhenFull() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let dropped = DroppedCounter()
        let record = AccessLogRecord(
            time: Date(), requestID: "x", clientIP: "1.2.3.4", method: "GET", route: "r", path: "/", status: 200,
            bytesIn: 0, bytesOut: 0, durationSeconds: 0, upstreamSeconds: nil, protocolName: "HTTP/1.1",
            tlsVersion: nil, rateLimit: nil, subjectHash: nil, upstreamEndpoint: nil
        )
        let writer = AccessLogWriter(fileDescriptor: fds[1], capacityBytes: 2 * record.estimatedBytes, onDrop: { dropped.add($0) })
        writer.stop()  // no background flushes from here on: the test drives them
        for _ in 0..<5 { writer.log(record) }
        writer.flush()
        #expect(dropped.value == 3)
        var bytes = [UInt8](repeating: 0, count: 4096)
        let count = read(fds[0], &bytes, bytes.count)
        #expect(String(decoding: bytes[0..<max(0, count)], as: UTF8.self).split(separator: "\n").count == 2)
    }
}

final class DroppedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var total = 0
    func add(_ n: Int) { lock.lock(); total += n; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return total }
}

/// `gateway_event_loop_tick_seconds` from a real event loop: NIO reports every tick, and a task
/// that keeps the loop busy shows up in the bucket of its length.
@Suite struct EventLoopTickTests {
    @Test func aBusyTickLandsInItsBucket() throws {
        let ticks = EventLoopTicks()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1, metricsDelegate: ticks)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        try loop.submit {
            // Busy for 3 ms (a spin, not a sleep: the tick measures the loop's own time).
            let start = NIODeadline.now()
            while NIODeadline.now() - start < .milliseconds(3) {}
        }.wait()
        // The tick is reported after its tasks, so after this wait returns: wait for the report.
        waitForTicks(ticks) { $0.sumSeconds >= 0.003 }
        let (cumulative, sum, tasks) = ticks.snapshot()
        let index = { (bound: Double) in EventLoopTicks.buckets.firstIndex(of: bound)! }
        let total = cumulative.last!
        #expect(total >= 1)
        #expect(tasks >= 1)
        // At least one tick above 2.5 ms, none above 1 s, and the sum holds the 3 ms.
        #expect(cumulative[index(0.0025)] < total)
        #expect(cumulative[index(1)] == total)
        #expect(sum >= 0.003)
        let text = ticks.render()
        #expect(text.contains("# TYPE gateway_event_loop_tick_seconds histogram"))
        #expect(text.contains("gateway_event_loop_tick_seconds_bucket{le=\"+Inf\"} \(total)"))
    }
}

extension EventLoopTickTests {
    /// NIO's tick starts after the I/O events were handled; the first handler to see bytes stamps the
    /// iteration, so time spent handling a read counts (without the stamp this tick reads ~0).
    @Test func timeSpentHandlingAReadCounts() throws {
        let ticks = EventLoopTicks()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1, metricsDelegate: ticks)
        let clients = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer {
            try? clients.syncShutdownGracefully()
            try? group.syncShutdownGracefully()
        }
        let received = group.next().makePromise(of: Void.self)
        let server = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(SlowReader(done: received))
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        defer { try? server.close().wait() }
        let client = try ClientBootstrap(group: clients).connect(to: server.localAddress!).wait()
        defer { try? client.close().wait() }
        let before = ticks.snapshot().cumulative
        try client.writeAndFlush(ByteBuffer(string: "x")).wait()
        try received.futureResult.wait()
        let over = { (counts: [UInt64]) in counts.last! - counts[EventLoopTicks.buckets.firstIndex(of: 0.0025)!] }
        // Reported once the iteration's tasks ran, which may be after the wait above returned.
        waitForTicks(ticks) { over($0.cumulative) > over(before) }
        let after = ticks.snapshot().cumulative
        #expect(over(after) > over(before), "no iteration over 2.5 ms: \(after)")
    }
}

extension EventLoopTickTests {
    /// `LoopSlot.now()` is one clock read per iteration on a loop whose iterations are reported, and
    /// the clock itself on a loop that never clears its stamp (a stale stamp there would be forever).
    @Test func loopNowIsTheIterationsStampOnlyWhereIterationsAreReported() throws {
        let ticks = EventLoopTicks()
        let reported = MultiThreadedEventLoopGroup(numberOfThreads: 1, metricsDelegate: ticks)
        let unreported = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer {
            try? reported.syncShutdownGracefully()
            try? unreported.syncShutdownGracefully()
        }
        /// Two readings 2 ms apart within one task (one iteration), and the clock's advance between them.
        func readings(on loop: EventLoop) throws -> (first: NIODeadline, second: NIODeadline, real: TimeAmount) {
            try loop.submit {
                let slot = EventLoopTicks.currentSlot()
                let realStart = NIODeadline.now()
                let first = slot.now()
                usleep(2000)
                let second = slot.now()
                return (first, second, NIODeadline.now() - realStart)
            }.wait()
        }
        // The first task may run before any iteration was reported: wait for one.
        try reported.next().submit {}.wait()
        waitForTicks(ticks) { $0.cumulative.last! >= 1 }
        let sameIteration = try readings(on: reported.next())
        #expect(sameIteration.first == sameIteration.second)
        #expect(sameIteration.real >= .milliseconds(2))
        // A later iteration has a later stamp. (A task submitted while the last one still runs
        // joins its iteration: submit until one lands in another, for at most 2 s.)
        var later = sameIteration.second
        let giveUp = NIODeadline.now() + .seconds(2)
        while later == sameIteration.second && NIODeadline.now() < giveUp {
            later = try reported.next().submit { EventLoopTicks.currentSlot().now() }.wait()
        }
        #expect(later > sameIteration.second)
        let clock = try readings(on: unreported.next())
        #expect(clock.second - clock.first >= .milliseconds(2))
    }
}

/// Polls until `done` holds for the ticks reported so far, for at most 2 s (the caller then
/// checks, so a report that never comes fails the test).
private func waitForTicks(
    _ ticks: EventLoopTicks, _ done: ((cumulative: [UInt64], sumSeconds: Double, tasks: UInt64)) -> Bool
) {
    let deadline = NIODeadline.now() + .seconds(2)
    while !done(ticks.snapshot()) && NIODeadline.now() < deadline { usleep(1000) }
}

/// Stamps the iteration like the gateway's first handlers, then keeps the loop busy for 3 ms.
private final class SlowReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let tickSlot = EventLoopTicks.currentSlot()
    private let done: EventLoopPromise<Void>

    init(done: EventLoopPromise<Void>) { self.done = done }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.tickSlot.ioBegins()
        let start = NIODeadline.now()
        while NIODeadline.now() - start < .milliseconds(3) {}
        self.done.succeed()
    }
}
