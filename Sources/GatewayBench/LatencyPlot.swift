import Foundation

/// A latency-by-percentile chart as a self-contained SVG, read as HdrHistogram plots are: the x axis
/// is `log10(1 / (1 - p))`, so 0%, 90%, 99%, 99.9%, 99.99% … are evenly spaced and the tail gets
/// as much room as the body; the y axis is latency in milliseconds, linear from 0.
enum LatencyPlot {
    static let width = 860.0
    static let height = 480.0
    static let margin = (left: 70.0, right: 30.0, top: 50.0, bottom: 60.0)

    /// Position of a percentile on the x axis (in decades of "nines").
    static func nines(_ percentile: Double) -> Double {
        let remaining = 1 - min(percentile, 99.9999999) / 100
        return log10(1 / remaining)
    }

    static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]

    static func svg(_ report: BenchReport) -> String {
        let title = "\(report.url) — \(report.mode == "rate" ? "fixed \(Int(report.target_rate ?? 0)) req/s" : "max throughput"), "
            + "\(report.protocol_), \(report.connections)×\(report.streams), \(String(format: "%.0f", report.duration_s))s"
        let l = report.latency_ms
        let summary = String(format: "p50 %.3f ms · p99 %.3f ms · p99.9 %.3f ms · max %.3f ms · %.0f req/s", l.p50, l.p99, l.p99_9, l.max, report.throughput_rps)
        return self.svg(series: [(nil, report)], title: title, subtitle: summary)
    }

    /// Several runs' curves on one chart, each in its own colour with a legend entry (`label`).
    static func svg(series: [(label: String?, report: BenchReport)], title: String, subtitle: String) -> String {
        let plotWidth = width - margin.left - margin.right
        let plotHeight = height - margin.top - margin.bottom
        // A curve ends at its last sample: with n samples, 100% sits at about 1 - 1/n.
        let lastNines = series.map { max(1, log10(Double(max($0.report.requests.completed, 1)))) }
        let xDecades = max(2, min(6, Int((lastNines.max() ?? 1).rounded(.up))))
        let maxLatency = max(series.flatMap { $0.report.distribution.map(\.latency_ms) }.max() ?? 0, 0.001)
        let yMax = niceCeiling(maxLatency)

        func x(_ decades: Double) -> Double { margin.left + min(decades, Double(xDecades)) / Double(xDecades) * plotWidth }
        func y(_ ms: Double) -> Double { margin.top + plotHeight - ms / yMax * plotHeight }

        var svg = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>

        """
        svg += "<text x=\"\(fmt(width / 2))\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">\(escape(title))</text>\n"
        svg += "<text x=\"\(fmt(width / 2))\" y=\"40\" text-anchor=\"middle\" fill=\"#555\">\(escape(subtitle))</text>\n"

        // Grid and axes.
        let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
        for decade in 0...xDecades {
            let px = x(Double(decade))
            svg += "<line x1=\"\(fmt(px))\" y1=\"\(fmt(margin.top))\" x2=\"\(fmt(px))\" y2=\"\(fmt(margin.top + plotHeight))\" stroke=\"#ddd\"/>\n"
            svg += "<text x=\"\(fmt(px))\" y=\"\(fmt(margin.top + plotHeight + 18))\" text-anchor=\"middle\">\(labels[decade])</text>\n"
        }
        for step in 0...5 {
            let value = yMax * Double(step) / 5
            let py = y(value)
            svg += "<line x1=\"\(fmt(margin.left))\" y1=\"\(fmt(py))\" x2=\"\(fmt(margin.left + plotWidth))\" y2=\"\(fmt(py))\" stroke=\"#ddd\"/>\n"
            svg += "<text x=\"\(fmt(margin.left - 8))\" y=\"\(fmt(py + 4))\" text-anchor=\"end\">\(trim(value))</text>\n"
        }
        svg += "<rect x=\"\(fmt(margin.left))\" y=\"\(fmt(margin.top))\" width=\"\(fmt(plotWidth))\" height=\"\(fmt(plotHeight))\" fill=\"none\" stroke=\"#888\"/>\n"
        svg += "<text x=\"\(fmt(margin.left + plotWidth / 2))\" y=\"\(fmt(height - 14))\" text-anchor=\"middle\">percentile</text>\n"
        svg += "<text transform=\"translate(18 \(fmt(margin.top + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\">latency (ms)</text>\n"

        // Each curve: a step up at each recorded percentile.
        for (index, entry) in series.enumerated() {
            let color = colors[index % colors.count]
            let points = entry.report.distribution
            if !points.isEmpty {
                var path = ""
                for (step, point) in points.enumerated() {
                    let decades = point.percentile >= 100 ? lastNines[index] : nines(point.percentile)
                    path += step == 0 ? "M" : " L"
                    path += "\(fmt(x(decades))) \(fmt(y(point.latency_ms)))"
                }
                svg += "<path d=\"\(path)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"/>\n"
            }
            if let label = entry.label {
                let ly = margin.top + 18 + Double(index) * 18
                svg += "<line x1=\"\(fmt(margin.left + 12))\" y1=\"\(fmt(ly - 4))\" x2=\"\(fmt(margin.left + 36))\" y2=\"\(fmt(ly - 4))\" stroke=\"\(color)\" stroke-width=\"3\"/>\n"
                svg += "<text x=\"\(fmt(margin.left + 42))\" y=\"\(fmt(ly))\">\(escape(label))</text>\n"
            }
        }
        svg += "</svg>\n"
        return svg
    }

    /// 1, 2, 2.5, 5 × 10^k at or above `value`.
    static func niceCeiling(_ value: Double) -> Double {
        let magnitude = pow(10, floor(log10(value)))
        for step in [1.0, 2.0, 2.5, 5.0, 10.0] where step * magnitude >= value { return step * magnitude }
        return 10 * magnitude
    }

    private static func fmt(_ value: Double) -> String { String(format: "%.1f", value) }

    private static func trim(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(format: "%g", value)
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}

extension BenchReport {
    public var svg: String { LatencyPlot.svg(self) }
}
