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
        public var p75: Double
        public var p90: Double
        public var p95: Double
        public var p99: Double
        public var p99_9: Double
        public var p99_99: Double
        public var max: Double
    }

    public struct Errors: Codable, Sendable, Equatable {
        public var total: Int
        /// Responses with a status their target did not expect (by default: outside 2xx), by status.
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
    /// Sent before the recorded run and left out of every figure.
    public var warmup_s: Double = 0
    /// One section per target (weighted request kind), in the order given.
    public var targets: [Section] = []
    /// One section per stage of the ramp (one stage without a ramp), warm-up excluded.
    public var stages: [Section] = []
    /// The thresholds held against this run, with what was observed.
    public var checks: [BenchCheck] = []
    /// All thresholds hold (true when there are none).
    public var passed: Bool = true
    /// The latency histogram in HdrHistogram's percentile-distribution text (`.hgrm`, milliseconds),
    /// as HdrHistogram's own `outputPercentileDistribution` writes it; not part of the JSON.
    public var hgrm: String = ""

    /// The figures of a part of the run (a target, a stage), and of the whole run (`total`).
    public struct Section: Codable, Sendable, Equatable {
        public var name: String
        /// Targets: method, path, weight and expected statuses.
        public var method: String?
        public var path: String?
        public var weight: Int?
        public var expect: String?
        /// Stages: their rate and duration.
        public var target_rate: Double?
        public var duration_s: Double?
        /// Targets: requests sent. Stages and the whole run: requests scheduled.
        public var scheduled: Int
        public var completed: Int
        public var throughput_rps: Double
        public var latency_ms: Latency
        public var status_counts: [String: Int]
        public var errors: Errors
    }

    enum CodingKeys: String, CodingKey {
        case url, mode, target_rate, tls, connections, streams, threads, duration_s, elapsed_s
        case throughput_rps, requests, latency_ms, status_counts, errors, distribution, timeline
        case warmup_s, targets, stages, checks, passed
        case protocol_ = "protocol"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.url = try c.decode(String.self, forKey: .url)
        self.mode = try c.decode(String.self, forKey: .mode)
        self.target_rate = try c.decodeIfPresent(Double.self, forKey: .target_rate)
        self.protocol_ = try c.decode(String.self, forKey: .protocol_)
        self.tls = try c.decode(Bool.self, forKey: .tls)
        self.connections = try c.decode(Int.self, forKey: .connections)
        self.streams = try c.decode(Int.self, forKey: .streams)
        self.threads = try c.decode(Int.self, forKey: .threads)
        self.duration_s = try c.decode(Double.self, forKey: .duration_s)
        self.elapsed_s = try c.decode(Double.self, forKey: .elapsed_s)
        self.throughput_rps = try c.decode(Double.self, forKey: .throughput_rps)
        self.requests = try c.decode(Requests.self, forKey: .requests)
        self.latency_ms = try c.decode(Latency.self, forKey: .latency_ms)
        self.status_counts = try c.decode([String: Int].self, forKey: .status_counts)
        self.errors = try c.decode(Errors.self, forKey: .errors)
        self.distribution = try c.decode([Point].self, forKey: .distribution)
        self.timeline = try c.decodeIfPresent([Interval].self, forKey: .timeline) ?? []
        // Reports written before targets, stages and thresholds existed still load (for compare).
        self.warmup_s = try c.decodeIfPresent(Double.self, forKey: .warmup_s) ?? 0
        self.targets = try c.decodeIfPresent([Section].self, forKey: .targets) ?? []
        self.stages = try c.decodeIfPresent([Section].self, forKey: .stages) ?? []
        self.checks = try c.decodeIfPresent([BenchCheck].self, forKey: .checks) ?? []
        self.passed = try c.decodeIfPresent(Bool.self, forKey: .passed) ?? true
    }

    init(
        url: String, mode: String, target_rate: Double?, protocol_: String, tls: Bool, connections: Int, streams: Int,
        threads: Int, duration_s: Double, elapsed_s: Double, throughput_rps: Double, requests: Requests, latency_ms: Latency,
        status_counts: [String: Int], errors: Errors, distribution: [Point], timeline: [Interval]
    ) {
        self.url = url
        self.mode = mode
        self.target_rate = target_rate
        self.protocol_ = protocol_
        self.tls = tls
        self.connections = connections
        self.streams = streams
        self.threads = threads
        self.duration_s = duration_s
        self.elapsed_s = elapsed_s
        self.throughput_rps = throughput_rps
        self.requests = requests
        self.latency_ms = latency_ms
        self.status_counts = status_counts
        self.errors = errors
        self.distribution = distribution
        self.timeline = timeline
    }

    /// The whole run as a section, for thresholds.
    public var total: Section {
        Section(
            name: "total", scheduled: self.requests.scheduled, completed: self.requests.completed, throughput_rps: self.throughput_rps,
            latency_ms: self.latency_ms, status_counts: self.status_counts, errors: self.errors
        )
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
        try c.encode(self.warmup_s, forKey: .warmup_s)
        try c.encode(self.targets, forKey: .targets)
        try c.encode(self.stages, forKey: .stages)
        try c.encode(self.checks, forKey: .checks)
        try c.encode(self.passed, forKey: .passed)
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
            p75: ms(histogram.valueAtPercentile(75)),
            p90: ms(histogram.valueAtPercentile(90)),
            p95: ms(histogram.valueAtPercentile(95)),
            p99: ms(histogram.valueAtPercentile(99)),
            p99_9: ms(histogram.valueAtPercentile(99.9)),
            p99_99: ms(histogram.valueAtPercentile(99.99)),
            max: empty ? 0 : ms(histogram.max)
        )
    }

    /// A latency by its threshold name (`p99.9`).
    func value(named name: String) -> Double? {
        switch name {
        case "min": self.min
        case "mean": self.mean
        case "p50": self.p50
        case "p75": self.p75
        case "p90": self.p90
        case "p95": self.p95
        case "p99": self.p99
        case "p99.9": self.p99_9
        case "p99.99": self.p99_99
        case "max": self.max
        default: nil
        }
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

    static func errors(_ stats: BenchStats) -> Errors {
        var byKind: [String: Int] = [:]
        for kind in BenchErrorKind.allCases { byKind[kind.rawValue] = stats.errorKinds[kind] ?? 0 }
        return Errors(
            total: stats.errors, by_status: Dictionary(uniqueKeysWithValues: stats.unexpectedCounts.map { (String($0.key), $0.value) }),
            by_kind: byKind
        )
    }

    static func section(_ name: String, _ stats: BenchStats, scheduled: Int, elapsed: Double) -> Section {
        Section(
            name: name, scheduled: scheduled, completed: stats.responses,
            throughput_rps: elapsed > 0 ? Double(stats.responses) / elapsed : 0, latency_ms: Latency(stats.latency),
            status_counts: Dictionary(uniqueKeysWithValues: stats.statusCounts.map { (String($0.key), $0.value) }),
            errors: self.errors(stats)
        )
    }

    /// One section per target and per stage from the loops' merged figures. A target's throughput
    /// is over the whole run; a stage's over its own duration.
    mutating func addSections(settings: BenchSettings, targetStats: [BenchStats], targetSent: [Int], stageStats: [BenchStats], stageScheduled: [Int]) {
        self.targets = settings.requests.enumerated().map { index, request in
            var section = Self.section(request.name, targetStats[index], scheduled: targetSent[index], elapsed: self.elapsed_s)
            section.method = request.method
            section.path = request.path
            section.weight = request.weight
            section.expect = request.expect.description
            return section
        }
        if settings.stages.isEmpty {
            self.stages = [Self.section("stage 1", stageStats[0], scheduled: stageScheduled[0], elapsed: self.elapsed_s)]
        } else {
            self.stages = settings.stages.enumerated().map { index, stage in
                var section = Self.section("stage \(index + 1)", stageStats[index], scheduled: stageScheduled[index], elapsed: Double(stage.durationNanos) / 1e9)
                section.target_rate = stage.rate
                section.duration_s = Double(stage.durationNanos) / 1e9
                return section
            }
        }
        self.warmup_s = Double(settings.warmupNanos) / 1e9
    }

    init(settings: BenchSettings, url: String, stats: BenchStats, requests: Requests, elapsedNanos: UInt64, timeline: [Interval]) {
        let elapsed = Double(elapsedNanos) / 1e9
        let mode: String
        let rate: Double?
        switch settings.mode {
        case .fixedRate:
            mode = "rate"
            // With a ramp: the mean rate over the stages.
            let seconds = Double(settings.durationNanos) / 1e9
            rate = settings.stages.reduce(0) { $0 + $1.rate * Double($1.durationNanos) / 1e9 } / max(seconds, 1e-9)
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
            errors: Self.errors(stats),
            distribution: Self.distribution(stats.latency),
            timeline: timeline
        )
        self.hgrm = Self.hgrm(stats.latency)
    }

    /// Values in milliseconds (the histogram holds microseconds), five ticks per half distance:
    /// the layout HdrHistogram's plotter and `HistogramLogProcessor` use.
    static func hgrm(_ histogram: Histogram<UInt64>) -> String {
        var text = ""
        histogram.outputPercentileDistribution(to: &text, outputValueUnitScalingRatio: 1000, percentileTicksPerHalfDistance: 5)
        return text
    }

    /// The human summary printed on stdout.
    public var text: String {
        func f(_ ms: Double) -> String {
            ms >= 1000 ? String(format: "%.2fs", ms / 1000) : ms >= 1 ? String(format: "%.2fms", ms) : String(format: "%.0fus", ms * 1000)
        }
        var lines: [String] = []
        var what = self.mode == "rate" ? String(format: "fixed rate %.0f req/s (open loop, latency from scheduled send time)", self.target_rate ?? 0)
            : "max throughput (closed loop)"
        if self.stages.count > 1 {
            let ramp = self.stages.map { String(format: "%.0f/s for %.0fs", $0.target_rate ?? 0, $0.duration_s ?? 0) }.joined(separator: ", ")
            what = "ramp \(ramp) (open loop, latency from scheduled send time)"
        }
        lines.append("\(self.url): \(what)")
        lines.append("  \(self.tls ? "TLS " : "")\(self.protocol_), \(self.connections) connections x \(self.streams) streams, "
            + "\(self.threads) threads, " + String(format: "%.1fs", self.duration_s))
        lines.append(String(format: "  throughput   %.1f req/s (%d responses in %.2fs)", self.throughput_rps, self.requests.completed, self.elapsed_s))
        let l = self.latency_ms
        lines.append("  latency      p50 \(f(l.p50))  p90 \(f(l.p90))  p99 \(f(l.p99))  p99.9 \(f(l.p99_9))  max \(f(l.max))  (mean \(f(l.mean)))")
        let statuses = self.status_counts.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
        lines.append("  statuses     \(statuses.isEmpty ? "none" : statuses)")
        let kinds = self.errors.by_kind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        lines.append("  errors       \(self.errors.total) (unexpected status \(self.errors.by_status.values.reduce(0, +)); \(kinds))")
        if self.warmup_s > 0 { lines.append(String(format: "  warm-up      %.1fs before the run, not recorded", self.warmup_s)) }
        func sectionLine(_ label: String, _ section: Section) -> String {
            let statuses = section.status_counts.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
            return "  \(label)  " + String(format: "%.1f req/s", section.throughput_rps)
                + "  p50 \(f(section.latency_ms.p50))  p99 \(f(section.latency_ms.p99))  errors \(section.errors.total)  [\(statuses)]"
        }
        if self.targets.count > 1 {
            let width = self.targets.map(\.name.count).max() ?? 0
            for target in self.targets {
                let share = self.requests.sent > 0 ? Double(target.scheduled) / Double(self.requests.sent) * 100 : 0
                let label = "target " + target.name.padding(toLength: width, withPad: " ", startingAt: 0) + String(format: " %5.1f%%", share)
                lines.append(sectionLine(label, target))
            }
        }
        if self.stages.count > 1 {
            for stage in self.stages {
                let label = "\(stage.name) " + String(format: "(%.0f/s for %.0fs)", stage.target_rate ?? 0, stage.duration_s ?? 0)
                lines.append(sectionLine(label, stage))
            }
        }
        if self.requests.unsent > 0 {
            lines.append("  backlog      \(self.requests.unsent) scheduled requests still waiting for a slot at the end (not counted)")
        }
        return lines.joined(separator: "\n")
    }
}
