import Foundation

/// `gateway bench compare a.json b.json`: two runs side by side, each row with the ratio b/a, and
/// both latency-by-percentile curves on one chart.
public struct BenchComparison: Sendable {
    public struct Row: Sendable, Equatable {
        public var metric: String
        public var a: Double
        public var b: Double
        /// Higher is better for throughput, lower for latencies and errors.
        public var higherIsBetter: Bool
        /// b / a; nil when a is 0 (no finite ratio).
        public var ratio: Double? { self.a == 0 ? (self.b == 0 ? 1 : nil) : self.b / self.a }
    }

    public let labels: (a: String, b: String)
    public let a: BenchReport
    public let b: BenchReport

    public init(a: BenchReport, b: BenchReport, labels: (a: String, b: String)) {
        self.a = a
        self.b = b
        self.labels = labels
    }

    /// Reads a report written by `--json`.
    public static func load(path: String) throws(BenchError) -> BenchReport {
        guard let data = FileManager.default.contents(atPath: path) else { throw BenchError.usage("\(path): cannot read the file") }
        do {
            return try JSONDecoder().decode(BenchReport.self, from: data)
        } catch let DecodingError.keyNotFound(key, context) {
            let path = (context.codingPath + [key]).map(\.stringValue).joined(separator: ".")
            throw BenchError.usage("\(path): missing (not a `gateway bench --json` report?)")
        } catch {
            throw BenchError.usage("\(path): not a `gateway bench --json` report (\(error))")
        }
    }

    public var rows: [Row] {
        func row(_ metric: String, _ value: (BenchReport) -> Double, higherIsBetter: Bool = false) -> Row {
            Row(metric: metric, a: value(self.a), b: value(self.b), higherIsBetter: higherIsBetter)
        }
        return [
            row("throughput req/s", \.throughput_rps, higherIsBetter: true),
            row("p50 ms", \.latency_ms.p50),
            row("p90 ms", \.latency_ms.p90),
            row("p99 ms", \.latency_ms.p99),
            row("p99.9 ms", \.latency_ms.p99_9),
            row("max ms", \.latency_ms.max),
            row("errors", { Double($0.errors.total) }),
            row("error share %", { report in
                let outcomes = report.requests.completed + report.errors.by_kind.values.reduce(0, +)
                return outcomes == 0 ? 0 : Double(report.errors.total) / Double(outcomes) * 100
            }),
        ]
    }

    /// The side-by-side table: one row per figure, `b/a` and whether b is better or worse.
    public var table: String {
        func number(_ value: Double) -> String {
            value == value.rounded() && abs(value) < 1e9 ? String(Int(value)) : String(format: value >= 100 ? "%.1f" : "%.3f", value)
        }
        let rows = self.rows
        let width = max(self.labels.a.count, self.labels.b.count, 10)
        func pad(_ text: String, _ n: Int) -> String { String(repeating: " ", count: max(0, n - text.count)) + text }
        var lines = [
            "a: \(self.labels.a)  (\(self.describe(self.a)))",
            "b: \(self.labels.b)  (\(self.describe(self.b)))",
            "",
            "metric".padding(toLength: 18, withPad: " ", startingAt: 0) + pad("a", width) + "  " + pad("b", width) + "      b/a",
        ]
        for row in rows {
            var ratio = "    —"
            if let value = row.ratio {
                ratio = String(format: "%7.3fx", value)
                let better = row.higherIsBetter ? value > 1.02 : value < 0.98
                let worse = row.higherIsBetter ? value < 0.98 : value > 1.02
                if better { ratio += "  better" } else if worse { ratio += "  worse" }
            }
            lines.append(row.metric.padding(toLength: 18, withPad: " ", startingAt: 0) + pad(number(row.a), width) + "  " + pad(number(row.b), width) + "  " + ratio)
        }
        return lines.joined(separator: "\n")
    }

    private func describe(_ report: BenchReport) -> String {
        let mode = report.mode == "rate" ? String(format: "%.0f req/s fixed", report.target_rate ?? 0) : "max"
        return "\(report.url), \(report.protocol_), \(mode), \(report.connections)×\(report.streams), \(String(format: "%.0fs", report.duration_s))"
    }

    /// Both curves on one chart, a in blue and b in red.
    public var svg: String {
        LatencyPlot.svg(
            series: [("a: \(self.labels.a)", self.a), ("b: \(self.labels.b)", self.b)],
            title: "latency by percentile: a vs b",
            subtitle: String(format: "p99 a %.3f ms · b %.3f ms · throughput a %.0f · b %.0f req/s",
                             self.a.latency_ms.p99, self.b.latency_ms.p99, self.a.throughput_rps, self.b.throughput_rps)
        )
    }
}
