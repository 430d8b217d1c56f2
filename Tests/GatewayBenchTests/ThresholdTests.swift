import Foundation
import Testing
@testable import GatewayBench

@Suite struct ThresholdTests {
    @Test func parsesEveryMetricAndComparison() throws {
        let p99 = try BenchThreshold(parsing: "p99 < 5ms")
        #expect(p99.metric == .latency("p99") && p99.comparison == .less && p99.bound == 5 && p99.text == "p99<5ms")
        #expect(try BenchThreshold(parsing: "p99.9<=1.5s").bound == 1500)
        #expect(try BenchThreshold(parsing: "max<250us").bound == 0.25)
        let errors = try BenchThreshold(parsing: "errors<0.1%")
        #expect(errors.metric == .errors(share: true) && abs(errors.bound - 0.001) < 1e-12)
        #expect(try BenchThreshold(parsing: "errors<=3").metric == .errors(share: false))
        let rate = try BenchThreshold(parsing: "rate>=0.99")
        #expect(rate.metric == .rate && rate.comparison == .greaterOrEqual && rate.bound == 0.99)
        #expect(try BenchThreshold(parsing: "rate>=99%").bound == 0.99)
        #expect(try BenchThreshold(parsing: "rps>1000/s").metric == .rps)
        let status = try BenchThreshold(parsing: "status:429>=50%")
        #expect(status.metric == .status(429, share: true) && status.bound == 0.5)
        #expect(try BenchThreshold(parsing: "status:503>0").comparison == .greater)
    }

    @Test func malformedThresholdsAreUsageErrors() {
        for text in ["p99", "p99<", "p99<5", "p99<5%", "p98<5ms", "errors<x%", "rate>=1.5", "rps<10%", "status:999>1", "<5ms", "p99=5ms", "errors<-1"] {
            #expect(throws: BenchError.self, "\(text)") { try BenchThreshold(parsing: text) }
        }
        let error = #expect(throws: BenchError.self) { try BenchThreshold(parsing: "p42<1ms") }
        #expect(error?.description.contains("unknown metric \"p42\"") == true)
    }

    func report(latencies: [UInt64], statuses: [Int: Int] = [:], timeouts: Int = 0, scheduled: Int? = nil) -> BenchReport {
        var stats = BenchStats()
        for latency in latencies { stats.recordResponse(status: 200, latencyMicros: latency) }
        for (status, count) in statuses { for _ in 0..<count { stats.recordResponse(status: status, latencyMicros: 100) } }
        for _ in 0..<timeouts { stats.recordError(.timeout) }
        let completed = stats.responses
        let settings = BenchSettings(
            target: BenchTarget(tls: false, host: "127.0.0.1", port: 80, path: "/"), mode: .fixedRate(1000), durationNanos: 1_000_000_000,
            connections: 1, streams: 1, http2: false, threads: 1, insecure: false, authorization: .none, timeoutNanos: 1_000_000_000
        )
        return BenchReport(
            settings: settings, url: "http://127.0.0.1/", stats: stats,
            requests: .init(scheduled: scheduled ?? completed + timeouts, sent: completed + timeouts, completed: completed, unsent: 0),
            elapsedNanos: 1_000_000_000, timeline: []
        )
    }

    @Test func evaluationHoldsAndFailsOnTheRightSide() throws {
        // 1000 responses: 990 at 1 ms, 10 at 20 ms, so p99 is 1 ms and p99.9 is 20 ms.
        let report = self.report(latencies: Array(repeating: 1000, count: 990) + Array(repeating: 20_000, count: 10))
        func holds(_ text: String) throws -> Bool { try BenchThreshold(parsing: text).evaluate(report.total).holds }
        #expect(try holds("p99<5ms"))
        #expect(try !holds("p99.9<5ms"))
        #expect(try holds("p99.9<=20.1ms"))
        #expect(try holds("max>=20ms"))
        #expect(try holds("errors<0.1%") && holds("errors<=0"))
        #expect(try holds("rate>=0.99") && holds("rate>=100%"))
        #expect(try holds("rps>=999") && !holds("rps>1000"))
        #expect(try holds("status:200>=100%") && holds("status:429<1"))
    }

    @Test func latencyBoundsFailWithoutResponses() throws {
        let report = self.report(latencies: [], timeouts: 3)
        let check = try BenchThreshold(parsing: "p99<5ms").evaluate(report.total)
        #expect(!check.holds && check.observed_text == "n/a")
        #expect(try !BenchThreshold(parsing: "max>=0ms").evaluate(report.total).holds)
        #expect(try BenchThreshold(parsing: "errors>=100%").evaluate(report.total).holds)
    }

    @Test func errorSharesAndRateCountEveryOutcome() throws {
        // 995 answered (990 OK, 5 × 503) and 5 timeouts; 1100 were scheduled.
        let report = self.report(latencies: Array(repeating: 1000, count: 990), statuses: [503: 5], timeouts: 5, scheduled: 1100)
        let errors = try BenchThreshold(parsing: "errors<0.1%").evaluate(report.total)
        #expect(!errors.holds && abs(errors.observed - 0.01) < 1e-9)  // 10 of 1000
        #expect(errors.observed_text == "1.000%")
        #expect(try BenchThreshold(parsing: "errors<=1%").evaluate(report.total).holds)
        #expect(try BenchThreshold(parsing: "errors<10").evaluate(report.total).holds == false)
        let rate = try BenchThreshold(parsing: "rate>=0.99").evaluate(report.total)
        #expect(!rate.holds && abs(rate.observed - 995.0 / 1100) < 1e-9)
        #expect(try BenchThreshold(parsing: "status:503>=0.5%").evaluate(report.total).holds)
    }

    @Test func verdictOverTheRunAndItsTargets() throws {
        var report = self.report(latencies: Array(repeating: 1000, count: 100))
        report.targets = [
            BenchReport.section("list", { var s = BenchStats(); for _ in 0..<80 { s.recordResponse(status: 200, latencyMicros: 1000) }; return s }(), scheduled: 80, elapsed: 1),
            BenchReport.section("login", { var s = BenchStats(); for _ in 0..<20 { s.recordResponse(status: 429, latencyMicros: 500, expected: true) }; return s }(), scheduled: 20, elapsed: 1),
        ]
        let pass = BenchVerdict.evaluate(
            report, thresholds: [try BenchThreshold(parsing: "p99<5ms"), try BenchThreshold(parsing: "errors<0.1%")],
            targetThresholds: ["login": [try BenchThreshold(parsing: "status:429>=50%")]]
        )
        #expect(pass.passed && pass.checks.count == 3)
        #expect(pass.checks.map(\.scope) == [nil, nil, "target login"])
        let line = pass.line(for: report)
        #expect(line.hasPrefix("verdict: PASS (3/3 thresholds hold: p99<5ms (1.000ms) ok, errors<0.1% (0.000%) ok, target login: status:429>=50% (100.000%) ok)"))
        #expect(!line.contains("\n"))

        let fail = BenchVerdict.evaluate(report, thresholds: [try BenchThreshold(parsing: "p99<0.5ms"), try BenchThreshold(parsing: "rate>=0.99")])
        #expect(!fail.passed)
        #expect(fail.line(for: report).hasPrefix("verdict: FAIL (1 of 2 thresholds failed: p99<0.5ms (1.000ms) FAILED)"))
        #expect(BenchVerdict.evaluate(report, thresholds: []).line(for: report).hasPrefix("verdict: PASS (no thresholds)"))

        // The checks go into the JSON, so CI can read the verdict without parsing text.
        report.checks = fail.checks
        report.passed = fail.passed
        let json = try #require(try JSONSerialization.jsonObject(with: try report.jsonData()) as? [String: Any])
        #expect(json["passed"] as? Bool == false)
        let checks = try #require(json["checks"] as? [[String: Any]])
        #expect(checks.map { $0["threshold"] as? String } == ["p99<0.5ms", "rate>=0.99"])
        #expect(checks.map { $0["holds"] as? Bool } == [false, true])
    }
}

@Suite struct CompareTests {
    func report(p: UInt64, count: Int, rps elapsedNanos: UInt64, errors: Int = 0) -> BenchReport {
        var stats = BenchStats()
        for index in 0..<count { stats.recordResponse(status: 200, latencyMicros: p + UInt64(index % 10)) }
        for _ in 0..<errors { stats.recordResponse(status: 503, latencyMicros: p) }
        let settings = BenchSettings(
            target: BenchTarget(tls: true, host: "127.0.0.1", port: 8443, path: "/api/bookings"), mode: .maxThroughput,
            durationNanos: elapsedNanos, connections: 4, streams: 1, http2: false, threads: 1, insecure: true, authorization: .none,
            timeoutNanos: 1_000_000_000
        )
        return BenchReport(
            settings: settings, url: "https://127.0.0.1:8443/api/bookings", stats: stats,
            requests: .init(scheduled: count + errors, sent: count + errors, completed: count + errors, unsent: 0),
            elapsedNanos: elapsedNanos, timeline: []
        )
    }

    @Test func tableHasRatiosAndSaysWhichWayTheyGo() throws {
        let a = self.report(p: 1000, count: 1000, rps: 1_000_000_000)
        let b = self.report(p: 2000, count: 1980, rps: 1_000_000_000, errors: 20)
        let comparison = BenchComparison(a: a, b: b, labels: ("before.json", "after.json"))
        let rows = Dictionary(uniqueKeysWithValues: comparison.rows.map { ($0.metric, $0) })
        #expect(abs(rows["throughput req/s"]!.ratio! - 2.0) < 1e-9)
        #expect(abs(rows["p50 ms"]!.ratio! - 2.0) < 0.01)
        #expect(rows["errors"]!.a == 0 && rows["errors"]!.b == 20 && rows["errors"]!.ratio == nil)
        let table = comparison.table
        let lines = table.split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix("a: before.json") && lines[1].hasPrefix("b: after.json"))
        let throughput = try #require(lines.first { $0.hasPrefix("throughput req/s") })
        #expect(throughput.contains("2.000x") && throughput.hasSuffix("better"))
        let p99 = try #require(lines.first { $0.hasPrefix("p99 ms") })
        #expect(p99.hasSuffix("worse"))
        for metric in ["p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors"] { #expect(lines.contains { $0.hasPrefix(metric) }) }
        let errors = try #require(lines.first { $0.hasPrefix("errors ") })
        #expect(errors.hasSuffix("—"))
    }

    @Test func svgDrawsBothCurvesWithALegend() {
        let comparison = BenchComparison(
            a: self.report(p: 1000, count: 1000, rps: 1_000_000_000), b: self.report(p: 3000, count: 1000, rps: 1_000_000_000),
            labels: ("a.json", "b<&>.json")
        )
        let svg = comparison.svg
        #expect(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>\n"))
        #expect(svg.components(separatedBy: "<path d=\"M").count - 1 == 2)
        #expect(svg.contains("stroke=\"\(LatencyPlot.colors[0])\"") && svg.contains("stroke=\"\(LatencyPlot.colors[1])\""))
        #expect(svg.contains(">a: a.json<") && svg.contains(">b: b&lt;&amp;&gt;.json<"))
        // One y scale for both: the larger curve's maximum (3 ms) sets it.
        #expect(svg.contains(">5<") || svg.contains(">4<"))
    }

    @Test func reportsRoundTripThroughJSONAndOldOnesStillLoad() throws {
        let report = self.report(p: 1000, count: 100, rps: 1_000_000_000)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("r-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try report.jsonData().write(to: URL(fileURLWithPath: path))
        var loaded = try BenchComparison.load(path: path)
        loaded.hgrm = report.hgrm  // not part of the JSON
        #expect(loaded == report)

        // A report from before targets, stages and checks existed.
        var object = try #require(try JSONSerialization.jsonObject(with: try report.jsonData()) as? [String: Any])
        for key in ["targets", "stages", "checks", "passed", "warmup_s", "timeline"] { object.removeValue(forKey: key) }
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
        let old = try BenchComparison.load(path: path)
        #expect(old.targets.isEmpty && old.passed && old.latency_ms == report.latency_ms)

        try Data("{\"url\": 1}".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: BenchError.self) { try BenchComparison.load(path: path) }
        #expect(throws: BenchError.self) { try BenchComparison.load(path: path + ".missing") }
    }

    @Test func hgrmIsHdrHistogramsPercentileDistribution() throws {
        var stats = BenchStats()
        for value in 1...10_000 { stats.recordResponse(status: 200, latencyMicros: UInt64(value)) }
        let lines = BenchReport.hgrm(stats.latency).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines[0].split(separator: " ") == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"])
        #expect(lines[1].isEmpty)
        let rows = lines.dropFirst(2).filter { !$0.isEmpty && !$0.hasPrefix("#") }.map { $0.split(separator: " ").map(String.init) }
        #expect(rows.dropLast().allSatisfy { $0.count == 4 } && rows.last?.count == 3)
        #expect(rows.first?[1] == "0.000000000000" && rows.last?[1] == "1.000000000000")
        #expect(rows.last?[0] == "10.007" && rows.last?[2] == "10000")  // ms, 3 decimals: 10,000 µs in its bucket
        let median = try #require(rows.first { Double($0[1])! >= 0.5 })
        #expect(abs(Double(median[0])! - 5.0) < 0.01)
        #expect(lines.contains { $0.hasPrefix("#[Mean    =") && $0.contains("StdDeviation   =") })
        #expect(lines.contains { $0.hasPrefix("#[Max     =") && $0.hasSuffix("Total count    =        10000]") })
        #expect(lines.contains { $0.hasPrefix("#[Buckets =") })
    }
}
