import Foundation
import Histogram

/// The result of one run: what the text summary, `--json` and `--plot` are made from.
/// Field names are the JSON's (snake_case); latencies are milliseconds with microsecond resolution.
public struct BenchReport: Codable, Sendable, Equatable {
    public struct Requests: Codable, Sendable, Equatable {
        /// Fixed rate: requests due before the end of the run. Max: requests sent.
        public var scheduled: Int
        public var sent: Int
        /// Requests that got an HTTP response (any status).
        public var completed: Int
        /// Fixed rate only: due but still waiting for a free slot when the run ended; not in the
        /// latency figures (their latency would be at least the time they had waited).
        public var unsent: Int
    }

    public struct Latency: Codable, Sendable, Equatable {
        public var min: Double
        public var mean: Double
        public var stdev: Double
        public var p50: Double
        public var p90: Double
        public var p99: Double
        public var p99_9: Double
        public var p99_99: Double
        public var max: Double
    }

    public struct Errors: Codable, Sendable, Equatable {
        public var total: Int
        /// Non-2xx responses by status code.
        public var by_status: [String: Int]
        /// Requests without a response: connect, timeout, reset.
        public var by_kind: [String: Int]
    }

    /// One point of the latency-by-percentile curve (HdrHistogram's log-spaced percentile ticks).
    public struct Point: Codable, Sendable, Equatable {
        public var percentile: Double
        public var latency_ms: Double
        /// Requests at or below this latency.
        public var count: UInt64
    }

    /// One second of the run (by completion time).
    public struct Interval: Codable, Sendable, Equatable {
        public var second: Int
        public var requests: Int
        public var errors: Int
        public var p50_ms: Double
        public var p99_ms: Double
        public var max_ms: Double
    }

    public var url: String
    public var mode: String
    public var target_rate: Double?
    public var protocol_: String
    public var tls: Bool
    public var connections: Int
    public var streams: Int
    public var threads: Int
    public var duration_s: Double
    /// From the scheduled start to the last response (or the end of the grace period).
    public var elapsed_s: Double
    public var throughput_rps: Double
    public var requests: Requests
    public var latency_ms: Latency
    public var status_counts: [String: Int]
    public var errors: Errors
    public var distribution: [Point]
    public var timeline: [Interval]

    enum CodingKeys: String, CodingKey {
        case url, mode, target_rate, tls, connections, streams, threads, duration_s, elapsed_s
        case throughput_rps, requests, latency_ms, status_counts, errors, distribution, timeline
        case protocol_ = "protocol"
    }

    /// As synthesized, except that `target_rate` is written as `null` in max mode rather than
    /// left out, so the document has the same keys in both modes.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self.url, forKey: .url)
        try c.encode(self.mode, forKey: .mode)
        if let rate = self.target_rate { try c.encode(rate, forKey: .target_rate) } else { try c.encodeNil(forKey: .target_rate) }
        try c.encode(self.protocol_, forKey: .protocol_)
        try c.encode(self.tls, forKey: .tls)
        try c.encode(self.connections, forKey: .connections)
        try c.encode(self.streams, forKey: .streams)
        try c.encode(self.threads, forKey: .threads)
        try c.encode(self.duration_s, forKey: .duration_s)
        try c.encode(self.elapsed_s, forKey: .elapsed_s)
        try c.encode(self.throughput_rps, forKey: .throughput_rps)
        try c.encode(self.requests, forKey: .requests)
        try c.encode(self.latency_ms, forKey: .latency_ms)
        try c.encode(self.status_counts, forKey: .status_counts)
        try c.encode(self.errors, forKey: .errors)
        try c.encode(self.distribution, forKey: .distribution)
        try c.encode(self.timeline, forKey: .timeline)
    }

    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }
}

extension BenchReport.Latency {
    init(_ histogram: Histogram<UInt64>) {
        func ms(_ micros: UInt64) -> Double { Double(micros) / 1000 }
        let empty = histogram.totalCount == 0
        self.init(
            min: empty ? 0 : ms(histogram.min),
            mean: empty ? 0 : histogram.mean / 1000,
            stdev: empty ? 0 : histogram.stdDeviation / 1000,
            p50: ms(histogram.valueAtPercentile(50)),
            p90: ms(histogram.valueAtPercentile(90)),
            p99: ms(histogram.valueAtPercentile(99)),
            p99_9: ms(histogram.valueAtPercentile(99.9)),
            p99_99: ms(histogram.valueAtPercentile(99.99)),
            max: empty ? 0 : ms(histogram.max)
        )
    }
}

extension BenchReport {
    /// HdrHistogram's percentile iteration: ticks halve their width each time the distance to 100%
    /// halves, so 90%, 99%, 99.9% … are all resolved.
    static func distribution(_ histogram: Histogram<UInt64>, ticksPerHalfDistance: Int = 5) -> [Point] {
        guard histogram.totalCount > 0 else { return [] }
        return histogram.percentiles(ticksPerHalfDistance: ticksPerHalfDistance).map {
            Point(percentile: $0.percentileLevelIteratedTo, latency_ms: Double($0.value) / 1000, count: $0.totalCountToThisValue)
        }
    }

    static func interval(second: Int, _ stats: BenchStats) -> Interval {
        Interval(
            second: second, requests: stats.responses, errors: stats.errors,
            p50_ms: Double(stats.latency.valueAtPercentile(50)) / 1000,
            p99_ms: Double(stats.latency.valueAtPercentile(99)) / 1000,
            max_ms: stats.latency.totalCount == 0 ? 0 : Double(stats.latency.max) / 1000
        )
    }

    init(settings: BenchSettings, url: String, stats: BenchStats, requests: Requests, elapsedNanos: UInt64, timeline: [Interval]) {
        let elapsed = Double(elapsedNanos) / 1e9
        var byStatus: [String: Int] = [:]
        for (status, count) in stats.statusCounts where !(200..<300).contains(status) { byStatus[String(status)] = count }
        var byKind: [String: Int] = [:]
        for kind in BenchErrorKind.allCases { byKind[kind.rawValue] = stats.errorKinds[kind] ?? 0 }
        let mode: String
        let rate: Double?
        switch settings.mode {
        case .fixedRate(let r):
            mode = "rate"
            rate = r
        case .maxThroughput:
            mode = "max"
            rate = nil
        }
        self.init(
            url: url, mode: mode, target_rate: rate, protocol_: settings.http2 ? "h2" : "http/1.1", tls: settings.target.tls,
            connections: settings.connections, streams: settings.streams, threads: settings.effectiveThreads,
            duration_s: Double(settings.durationNanos) / 1e9, elapsed_s: elapsed,
            throughput_rps: elapsed > 0 ? Double(stats.responses) / elapsed : 0,
            requests: requests,
            latency_ms: Latency(stats.latency),
            status_counts: Dictionary(uniqueKeysWithValues: stats.statusCounts.map { (String($0.key), $0.value) }),
            errors: Errors(total: stats.errors, by_status: byStatus, by_kind: byKind),
            distribution: Self.distribution(stats.latency),
            timeline: timeline
        )
    }

    /// The human summary printed on stdout.
    public var text: String {
        func f(_ ms: Double) -> String {
            ms >= 1000 ? String(format: "%.2fs", ms / 1000) : ms >= 1 ? String(format: "%.2fms", ms) : String(format: "%.0fus", ms * 1000)
        }
        var lines: [String] = []
        let what = self.mode == "rate" ? String(format: "fixed rate %.0f req/s (open loop, latency from scheduled send time)", self.target_rate ?? 0)
            : "max throughput (closed loop)"
        lines.append("\(self.url): \(what)")
        lines.append("  \(self.tls ? "TLS " : "")\(self.protocol_), \(self.connections) connections x \(self.streams) streams, "
            + "\(self.threads) threads, " + String(format: "%.1fs", self.duration_s))
        lines.append(String(format: "  throughput   %.1f req/s (%d responses in %.2fs)", self.throughput_rps, self.requests.completed, self.elapsed_s))
        let l = self.latency_ms
        lines.append("  latency      p50 \(f(l.p50))  p90 \(f(l.p90))  p99 \(f(l.p99))  p99.9 \(f(l.p99_9))  max \(f(l.max))  (mean \(f(l.mean)))")
        let statuses = self.status_counts.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
        lines.append("  statuses     \(statuses.isEmpty ? "none" : statuses)")
        let kinds = self.errors.by_kind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        lines.append("  errors       \(self.errors.total) (non-2xx \(self.errors.by_status.values.reduce(0, +)); \(kinds))")
        if self.requests.unsent > 0 {
            lines.append("  backlog      \(self.requests.unsent) scheduled requests still waiting for a slot at the end (not counted)")
        }
        return lines.joined(separator: "\n")
    }
}
