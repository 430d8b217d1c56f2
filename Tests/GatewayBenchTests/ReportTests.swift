import Foundation
import Testing
@testable import GatewayBench

@Suite struct ReportTests {
    func settings(_ mode: BenchSettings.Mode = .fixedRate(500)) -> BenchSettings {
        BenchSettings(
            target: BenchTarget(tls: true, host: "127.0.0.1", port: 8443, path: "/api/bookings"), mode: mode,
            durationNanos: 3_000_000_000, connections: 4, streams: 10, http2: true, threads: 2, insecure: true,
            authorization: .none, headers: [], timeoutNanos: 10_000_000_000
        )
    }

    @Test func histogramsFromSeveralLoopsMergeIntoTheWhole() {
        var whole = BenchStats()
        var parts = [BenchStats(), BenchStats(), BenchStats()]
        for value in 1...3000 {
            let latency = UInt64(value * 37 % 20_000 + 50)
            let status = value % 100 == 0 ? 503 : 200
            whole.recordResponse(status: status, latencyMicros: latency)
            parts[value % 3].recordResponse(status: status, latencyMicros: latency)
        }
        parts[1].recordError(.timeout)
        parts[2].recordError(.reset)
        parts[2].recordError(.reset)
        whole.recordError(.timeout)
        whole.recordError(.reset)
        whole.recordError(.reset)

        let merged = BenchStats.merged(parts)
        #expect(merged.latency.totalCount == 3000)
        #expect(merged.latency == whole.latency)
        for p in [50.0, 90, 99, 99.9, 100] {
            #expect(merged.latency.valueAtPercentile(p) == whole.latency.valueAtPercentile(p))
        }
        #expect(merged.statusCounts == [200: 2970, 503: 30])
        #expect(merged.errorKinds == [.timeout: 1, .reset: 2])
        #expect(merged.responses == 3000)
        #expect(merged.statusErrors == 30)
        #expect(merged.errors == 33)
    }

    @Test func latenciesOutsideTheRangeAreClampedNotDropped() {
        var stats = BenchStats()
        stats.recordResponse(status: 200, latencyMicros: 0)
        stats.recordResponse(status: 200, latencyMicros: BenchStats.highestTrackableMicros * 2)
        #expect(stats.latency.totalCount == 2)
    }

    func sampleReport() throws -> [String: Any] {
        var stats = BenchStats()
        for value in 1...1000 { stats.recordResponse(status: 200, latencyMicros: UInt64(value) * 10) }
        stats.recordResponse(status: 429, latencyMicros: 500)
        stats.recordError(.connect)
        let report = BenchReport(
            settings: self.settings(), url: "https://127.0.0.1:8443/api/bookings", stats: stats,
            requests: .init(scheduled: 1500, sent: 1002, completed: 1001, unsent: 498), elapsedNanos: 2_000_000_000,
            timeline: [BenchReport.interval(second: 1, stats)]
        )
        let object = try JSONSerialization.jsonObject(with: try report.jsonData())
        return try #require(object as? [String: Any])
    }

    @Test func jsonHasTheDocumentedShape() throws {
        let json = try self.sampleReport()
        #expect(Set(json.keys) == [
            "url", "mode", "target_rate", "protocol", "tls", "connections", "streams", "threads", "duration_s", "elapsed_s",
            "throughput_rps", "requests", "latency_ms", "status_counts", "errors", "distribution", "timeline",
            "warmup_s", "targets", "stages", "checks", "passed",
        ])
        #expect(json["mode"] as? String == "rate")
        #expect(json["target_rate"] as? Double == 500)
        #expect(json["protocol"] as? String == "h2")
        #expect(json["throughput_rps"] as? Double == 500.5)
        let latency = try #require(json["latency_ms"] as? [String: Double])
        #expect(Set(latency.keys) == ["min", "mean", "stdev", "p50", "p75", "p90", "p95", "p99", "p99_9", "p99_99", "max"])
        #expect(abs(latency["p50"]! - 5.0) < 0.01)
        #expect(abs(latency["max"]! - 10.0) < 0.01)
        let requests = try #require(json["requests"] as? [String: Int])
        #expect(requests == ["scheduled": 1500, "sent": 1002, "completed": 1001, "unsent": 498])
        #expect(json["status_counts"] as? [String: Int] == ["200": 1000, "429": 1])
        let errors = try #require(json["errors"] as? [String: Any])
        #expect(errors["total"] as? Int == 2)
        #expect(errors["by_status"] as? [String: Int] == ["429": 1])
        #expect(errors["by_kind"] as? [String: Int] == ["connect": 1, "timeout": 0, "reset": 0])

        // The distribution: HdrHistogram's log-spaced percentile ticks up to 100%, monotonic.
        let points = try #require(json["distribution"] as? [[String: Any]])
        let percentiles = points.compactMap { $0["percentile"] as? Double }
        let latencies = points.compactMap { $0["latency_ms"] as? Double }
        #expect(points.count == percentiles.count && points.count == latencies.count)
        #expect(percentiles.first == 0 && percentiles.last == 100)
        #expect(percentiles.contains(90) && percentiles.contains { $0 >= 99 && $0 < 100 })
        #expect(zip(percentiles, percentiles.dropFirst()).allSatisfy { $0 < $1 })
        #expect(zip(latencies, latencies.dropFirst()).allSatisfy { $0 <= $1 })
        let timeline = try #require(json["timeline"] as? [[String: Any]])
        #expect(timeline.count == 1)
        #expect(Set(timeline[0].keys) == ["second", "requests", "errors", "p50_ms", "p99_ms", "max_ms"])
    }

    @Test func svgIsASelfContainedLatencyByPercentileChart() throws {
        var stats = BenchStats()
        for value in 1...5000 { stats.recordResponse(status: 200, latencyMicros: UInt64(value)) }
        let report = BenchReport(
            settings: self.settings(.maxThroughput), url: "https://x/a?b=<c>&d", stats: stats,
            requests: .init(scheduled: 5000, sent: 5000, completed: 5000, unsent: 0), elapsedNanos: 1_000_000_000, timeline: []
        )
        let svg = report.svg
        #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        #expect(svg.hasSuffix("</svg>\n"))
        for label in ["0%", "90%", "99%", "99.9%", "99.99%", "latency (ms)"] { #expect(svg.contains(">\(label)<")) }
        #expect(svg.contains("<path d=\"M"))
        let json = try #require(try JSONSerialization.jsonObject(with: try report.jsonData()) as? [String: Any])
        #expect(json["mode"] as? String == "max")
        #expect(json.keys.contains("target_rate") && json["target_rate"] is NSNull)
        #expect(svg.contains("a?b=&lt;c&gt;&amp;d"))  // escaped
        #expect(!svg.contains("http://www.w3.org/1999/xlink"))  // nothing external
        // 99% sits two decades from 0%, 99.9% three.
        #expect(abs(LatencyPlot.nines(99) - 2) < 1e-9 && abs(LatencyPlot.nines(99.9) - 3) < 1e-9)
        #expect(LatencyPlot.niceCeiling(3.7) == 5 && LatencyPlot.niceCeiling(0.012) == 0.02)
    }
}
