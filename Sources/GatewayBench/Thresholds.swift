import Foundation

/// A pass/fail condition on a run, k6-style: `p99<5ms`, `errors<0.1%`, `rate>=0.99`.
///
/// | metric | value |
/// |---|---|
/// | `min` `mean` `p50` `p75` `p90` `p95` `p99` `p99.9` `p99.99` `max` | latency with a unit: `us`, `ms`, `s` |
/// | `errors` | a count (`errors<10`) or a share of the requests with an outcome (`errors<0.1%`) |
/// | `rate` | answered / scheduled, as a fraction (`0.99`) or percentage (`99%`) |
/// | `rps` | throughput in responses per second |
/// | `status:CODE` | responses with that status: a count, or a share of the responses (`status:429>=50%`) |
public struct BenchThreshold: Sendable, Equatable, CustomStringConvertible {
    public enum Metric: Sendable, Equatable {
        case latency(String)
        case errors(share: Bool)
        case rate
        case rps
        case status(Int, share: Bool)
    }

    public enum Comparison: String, Sendable, CaseIterable {
        case lessOrEqual = "<="
        case greaterOrEqual = ">="
        case less = "<"
        case greater = ">"

        func holds(_ observed: Double, _ bound: Double) -> Bool {
            switch self {
            case .less: observed < bound
            case .lessOrEqual: observed <= bound
            case .greater: observed > bound
            case .greaterOrEqual: observed >= bound
            }
        }
    }

    public static let latencyMetrics = ["min", "mean", "p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99", "max"]

    public let metric: Metric
    public let comparison: Comparison
    /// Milliseconds for latencies, a fraction (0…1) for shares and `rate`.
    public let bound: Double
    /// As written, spaces removed: what the verdict prints.
    public let text: String

    public var description: String { self.text }

    public init(parsing raw: String) throws(BenchError) {
        let text = raw.filter { $0 != " " && $0 != "\t" }
        guard let comparison = Comparison.allCases.first(where: { text.contains($0.rawValue) }),
              let range = text.range(of: comparison.rawValue)
        else {
            throw BenchError.usage("threshold \"\(raw)\": expected METRIC<VALUE, METRIC<=VALUE, METRIC>VALUE or METRIC>=VALUE")
        }
        let name = String(text[..<range.lowerBound])
        let value = String(text[range.upperBound...])
        func fail(_ why: String) -> BenchError { BenchError.usage("threshold \"\(raw)\": \(why)") }
        guard !value.isEmpty else { throw fail("no value after \(comparison.rawValue)") }
        let isShare = value.hasSuffix("%")
        func number(_ text: String) throws(BenchError) -> Double {
            guard let parsed = Double(text), parsed.isFinite, parsed >= 0 else { throw fail("\"\(value)\" is not a non-negative number") }
            return parsed
        }

        if Self.latencyMetrics.contains(name) {
            guard let ms = Self.milliseconds(value) else { throw fail("a latency needs a unit: 500us, 5ms, 1.5s") }
            self.metric = .latency(name)
            self.bound = ms
        } else if name == "errors" {
            self.metric = .errors(share: isShare)
            self.bound = isShare ? try number(String(value.dropLast())) / 100 : try number(value)
        } else if name == "rate" {
            let fraction = isShare ? try number(String(value.dropLast())) / 100 : try number(value)
            guard fraction <= 1 else { throw fail("rate is answered/scheduled: between 0 and 1 (or 0% and 100%)") }
            self.metric = .rate
            self.bound = fraction
        } else if name == "rps" {
            self.metric = .rps
            self.bound = try number(value.hasSuffix("/s") ? String(value.dropLast(2)) : value)
        } else if name.hasPrefix("status:"), let code = Int(name.dropFirst("status:".count)), (100...599).contains(code) {
            self.metric = .status(code, share: isShare)
            self.bound = isShare ? try number(String(value.dropLast())) / 100 : try number(value)
        } else {
            throw fail("unknown metric \"\(name)\" (expected \((Self.latencyMetrics + ["errors", "rate", "rps", "status:CODE"]).joined(separator: ", ")))")
        }
        if isShare, case .latency = self.metric { throw fail("a latency cannot be a percentage") }
        if isShare, self.metric == .rps { throw fail("rps cannot be a percentage") }
        self.comparison = comparison
        self.text = text
    }

    static func milliseconds(_ text: String) -> Double? {
        for (suffix, scale) in [("us", 0.001), ("µs", 0.001), ("ms", 1.0), ("s", 1000.0)] where text.hasSuffix(suffix) {
            guard let value = Double(text.dropLast(suffix.count)), value >= 0, value.isFinite else { return nil }
            return value * scale
        }
        return nil
    }

    /// What the section shows for this metric, in the threshold's units.
    func observed(in section: BenchReport.Section) -> Double {
        switch self.metric {
        case .latency(let name):
            // No response, no latency: a bound on it cannot hold (a 0 would pass any `<`).
            guard section.completed > 0 else { return .nan }
            return section.latency_ms.value(named: name) ?? .nan
        case .errors(let share):
            guard share else { return Double(section.errors.total) }
            let outcomes = section.completed + section.errors.by_kind.values.reduce(0, +)
            return outcomes == 0 ? 0 : Double(section.errors.total) / Double(outcomes)
        case .rate:
            return section.scheduled == 0 ? 1 : Double(section.completed) / Double(section.scheduled)
        case .rps:
            return section.throughput_rps
        case .status(let code, let share):
            let count = section.status_counts[String(code)] ?? 0
            guard share else { return Double(count) }
            return section.completed == 0 ? 0 : Double(count) / Double(section.completed)
        }
    }

    public func evaluate(_ section: BenchReport.Section, scope: String? = nil) -> BenchCheck {
        let observed = self.observed(in: section)
        return BenchCheck(threshold: self, scope: scope, observed: observed, holds: self.comparison.holds(observed, self.bound))
    }

    /// An observed value in the threshold's own terms: `3.21ms`, `0.012%`, `0.998`, `1520.4/s`.
    func format(_ value: Double) -> String {
        guard value.isFinite else { return "n/a" }
        switch self.metric {
        case .latency: return value >= 1000 ? String(format: "%.3fs", value / 1000) : String(format: "%.3fms", value)
        case .errors(true), .status(_, true): return String(format: "%.3f%%", value * 100)
        case .errors(false), .status(_, false): return String(Int(value))
        case .rate: return String(format: "%.4f", value)
        case .rps: return String(format: "%.1f/s", value)
        }
    }
}

/// One threshold held against one section of a report.
public struct BenchCheck: Sendable, Equatable, Codable {
    public var threshold: String
    /// nil for the whole run; `target NAME` for a target's own thresholds.
    public var scope: String?
    public var observed: Double
    public var observed_text: String
    public var holds: Bool

    init(threshold: BenchThreshold, scope: String?, observed: Double, holds: Bool) {
        self.threshold = threshold.text
        self.scope = scope
        self.observed = observed.isFinite ? observed : -1
        self.observed_text = threshold.format(observed)
        self.holds = holds
    }

    /// `p99 3.210ms < 5ms ✓`, with the target first when it is one.
    var line: String {
        (self.scope.map { "\($0): " } ?? "") + "\(self.threshold) (\(self.observed_text)) \(self.holds ? "ok" : "FAILED")"
    }
}

/// Every check of a run and what they add up to.
public struct BenchVerdict: Sendable, Equatable {
    public var checks: [BenchCheck]

    public var passed: Bool { self.checks.allSatisfy(\.holds) }

    /// The run's own thresholds against the whole run, then each target's own against that target.
    public static func evaluate(_ report: BenchReport, thresholds: [BenchThreshold], targetThresholds: [String: [BenchThreshold]] = [:]) -> BenchVerdict {
        var checks = thresholds.map { $0.evaluate(report.total) }
        for target in report.targets {
            for threshold in targetThresholds[target.name] ?? [] {
                checks.append(threshold.evaluate(target, scope: "target \(target.name)"))
            }
        }
        return BenchVerdict(checks: checks)
    }

    /// The last line of the text output, one line whatever happened.
    public func line(for report: BenchReport) -> String {
        let summary = String(format: "%d requests, %d errors, p99 %.3fms, %.1f req/s", report.requests.completed, report.errors.total,
                             report.latency_ms.p99, report.throughput_rps)
        if self.checks.isEmpty { return "verdict: PASS (no thresholds) — \(summary)" }
        let failed = self.checks.filter { !$0.holds }
        if failed.isEmpty {
            return "verdict: PASS (\(self.checks.count)/\(self.checks.count) thresholds hold: \(self.checks.map(\.line).joined(separator: ", "))) — \(summary)"
        }
        return "verdict: FAIL (\(failed.count) of \(self.checks.count) thresholds failed: \(failed.map(\.line).joined(separator: ", "))) — \(summary)"
    }
}
