import Synchronization

/// Latency buckets in seconds: sub-millisecond resolution for gateway-added latency, up to the
/// 15 s default response timeout.
let latencyBuckets: [Double] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15,
]

/// A Prometheus histogram with fixed buckets; one mutex-protected array, cheap enough for two
/// event loops (a few tens of nanoseconds per observation, no allocation).
final class LatencyHistogram: Sendable {
    private struct State {
        var counts: [UInt64]
        var sum: Double = 0
        var count: UInt64 = 0
    }
    let buckets: [Double]
    private let state: Mutex<State>

    init(buckets: [Double] = latencyBuckets) {
        self.buckets = buckets
        self.state = Mutex(State(counts: [UInt64](repeating: 0, count: buckets.count)))
    }

    func observe(seconds: Double) {
        // A plain loop: `firstIndex(where:)` costs a closure and, unspecialized, allocations.
        var index = 0
        while index < self.buckets.count, seconds > self.buckets[index] { index += 1 }
        self.state.withLock { state in
            if index < state.counts.count { state.counts[index] += 1 }
            state.sum += seconds
            state.count += 1
        }
    }

    /// Cumulative bucket counts (`le`), sum and count, as Prometheus wants them.
    func snapshot() -> (cumulative: [UInt64], sum: Double, count: UInt64) {
        self.state.withLock { state in
            var running: UInt64 = 0
            let cumulative = state.counts.map { running += $0; return running }
            return (cumulative, state.sum, state.count)
        }
    }
}

/// A counter family keyed by a bounded set of label values.
final class LabeledCounter: Sendable {
    let labelNames: [String]
    private let values = Mutex<[[String]: Double]>([:])

    init(labelNames: [String]) { self.labelNames = labelNames }

    func increment(_ labels: [String], by amount: Double = 1) {
        self.values.withLock { $0[labels, default: 0] += amount }
    }

    func set(_ labels: [String], _ value: Double) {
        self.values.withLock { $0[labels] = value }
    }

    func value(_ labels: [String]) -> Double { self.values.withLock { $0[labels] ?? 0 } }

    func snapshot() -> [([String], Double)] {
        self.values.withLock { Array($0) }.sorted { $0.0.lexicographicallyPrecedes($1.0) }
    }
}

/// Histograms keyed by route, created on first use.
final class HistogramFamily: Sendable {
    private let histograms = Mutex<[String: LatencyHistogram]>([:])

    func histogram(_ key: String) -> LatencyHistogram {
        self.histograms.withLock { map in
            if let existing = map[key] { return existing }
            let created = LatencyHistogram()
            map[key] = created
            return created
        }
    }

    func snapshot() -> [(String, LatencyHistogram)] {
        self.histograms.withLock { Array($0) }.sorted { $0.0 < $1.0 }.map { ($0.0, $0.1) }
    }
}

/// Every series of SPEC "Admin listener" `/metrics`. Labels are bounded: route names (not raw
/// paths), a fixed method set, status codes, policy names, reasons — never user ids or IPs.
final class GatewayMetrics: Sendable {
    /// `gateway_requests_total`, keyed by a struct so counting a request allocates nothing.
    private let requestCounts = Mutex<[RequestKey: Count]>([:])

    /// A series' count, boxed so that counting a known series is a dictionary read, not an
    /// in-place modification of the dictionary.
    private final class Count: @unchecked Sendable {
        var value = 0
    }

    struct RequestKey: Hashable {
        var route: String
        var method: String
        var status: Int
        var protocolName: String
    }
    let requestDurations = HistogramFamily()
    let upstreamDurations = HistogramFamily()
    let rateLimitDecisions = LabeledCounter(labelNames: ["policy", "decision"])
    let jwtRejections = LabeledCounter(labelNames: ["reason"])
    let redisErrors = LabeledCounter(labelNames: [])
    let connections = LabeledCounter(labelNames: ["listener", "protocol"])
    let upstreamEndpointUp = LabeledCounter(labelNames: ["upstream", "endpoint"])
    let configReloads = LabeledCounter(labelNames: ["result"])
    let accessLogDropped = LabeledCounter(labelNames: [])
    let upstreamRetries = LabeledCounter(labelNames: ["upstream"])

    /// Methods outside this set are reported as `OTHER`, so a client cannot mint label values.
    static let knownMethods: Set<String> = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    init() {}

    func recordRequest(
        route: String, method: String, status: Int, protocolName: String, seconds: Double, upstreamSeconds: Double?
    ) {
        let methodLabel = Self.knownMethods.contains(method) ? method : "OTHER"
        let key = RequestKey(route: route, method: methodLabel, status: status, protocolName: protocolName)
        self.requestCounts.withLock { counts in
            if let count = counts[key] {
                count.value += 1
            } else {
                let count = Count()
                count.value = 1
                counts[key] = count
            }
        }
        self.requestDurations.histogram(route).observe(seconds: seconds)
        if let upstreamSeconds { self.upstreamDurations.histogram(route).observe(seconds: upstreamSeconds) }
    }

    /// Prometheus text exposition format 0.0.4.
    func render() -> String {
        var out = ""
        out.reserveCapacity(4096)
        func counter(_ name: String, _ help: String, _ family: LabeledCounter, type: String = "counter") {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            let rows = family.snapshot()
            if rows.isEmpty && family.labelNames.isEmpty { out += "\(name) 0\n" }
            for (labels, value) in rows {
                out += name + Self.labelText(family.labelNames, labels) + " " + Self.number(value) + "\n"
            }
        }
        func histograms(_ name: String, _ help: String, _ family: HistogramFamily) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
            for (route, histogram) in family.snapshot() {
                let (cumulative, sum, count) = histogram.snapshot()
                for (bound, value) in zip(histogram.buckets, cumulative) {
                    out += "\(name)_bucket" + Self.labelText(["route", "le"], [route, Self.number(bound)]) + " \(value)\n"
                }
                out += "\(name)_bucket" + Self.labelText(["route", "le"], [route, "+Inf"]) + " \(count)\n"
                out += "\(name)_sum" + Self.labelText(["route"], [route]) + " " + Self.number(sum) + "\n"
                out += "\(name)_count" + Self.labelText(["route"], [route]) + " \(count)\n"
            }
        }
        out += "# HELP gateway_requests_total Requests answered, by route, method, status and protocol.\n"
        out += "# TYPE gateway_requests_total counter\n"
        let requestRows = self.requestCounts.withLock { $0.map { (key: $0.key, count: $0.value.value) } }.sorted {
            ($0.key.route, $0.key.method, $0.key.status, $0.key.protocolName) < ($1.key.route, $1.key.method, $1.key.status, $1.key.protocolName)
        }
        for (key, count) in requestRows {
            out += "gateway_requests_total" + Self.labelText(
                ["route", "method", "status", "protocol"], [key.route, key.method, String(key.status), key.protocolName]
            ) + " \(count)\n"
        }
        histograms("gateway_request_duration_seconds", "Time from request head to last response byte.", self.requestDurations)
        histograms("gateway_upstream_duration_seconds", "Time from upstream request start to response head.", self.upstreamDurations)
        counter("gateway_ratelimit_decisions_total", "Rate-limit decisions by policy.", self.rateLimitDecisions)
        counter("gateway_jwt_rejections_total", "Rejected bearer tokens by reason.", self.jwtRejections)
        counter("gateway_redis_errors_total", "Rate-limit store errors.", self.redisErrors)
        counter("gateway_connections", "Open client connections.", self.connections, type: "gauge")
        counter("gateway_upstream_endpoint_up", "1 when the endpoint is in rotation.", self.upstreamEndpointUp, type: "gauge")
        counter("gateway_config_reloads_total", "Config reloads by result.", self.configReloads)
        counter("gateway_upstream_retries_total", "Requests retried on another endpoint (within the retry budget).", self.upstreamRetries)
        counter("gateway_access_log_dropped_total", "Access log lines dropped because the writer fell behind.", self.accessLogDropped)
        return out
    }

    static func labelText(_ names: [String], _ values: [String]) -> String {
        guard !names.isEmpty else { return "" }
        let pairs = zip(names, values).map { name, value in
            var escaped = ""
            for character in value {
                switch character {
                case "\\": escaped += "\\\\"
                case "\"": escaped += "\\\""
                case "\n": escaped += "\\n"
                default: escaped.append(character)
                }
            }
            return "\(name)=\"\(escaped)\""
        }
        return "{" + pairs.joined(separator: ",") + "}"
    }

    static func number(_ value: Double) -> String {
        if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}
