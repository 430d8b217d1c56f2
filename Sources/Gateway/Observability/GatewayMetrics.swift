import NIOHTTP1
import Synchronization

/// Latency buckets in seconds: sub-millisecond resolution for gateway-added latency, up to the
/// 15 s default response timeout.
let latencyBuckets: [Double] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15,
]

/// The counts of a Prometheus histogram with fixed buckets, guarded by whoever holds it.
struct HistogramCounts {
    let buckets: [Double]
    private var counts: [UInt64]
    private var sum: Double = 0
    private var count: UInt64 = 0

    init(buckets: [Double] = latencyBuckets) {
        self.buckets = buckets
        self.counts = [UInt64](repeating: 0, count: buckets.count)
    }

    mutating func observe(seconds: Double) {
        // A plain loop: `firstIndex(where:)` costs a closure and, unspecialized, allocations.
        var index = 0
        while index < self.buckets.count, seconds > self.buckets[index] { index += 1 }
        if index < self.counts.count { self.counts[index] += 1 }
        self.sum += seconds
        self.count += 1
    }

    /// Cumulative bucket counts (`le`), sum and count, as Prometheus wants them.
    func snapshot() -> (cumulative: [UInt64], sum: Double, count: UInt64) {
        var running: UInt64 = 0
        let cumulative = self.counts.map { running += $0; return running }
        return (cumulative, self.sum, self.count)
    }
}

/// A histogram of its own lock.
final class LatencyHistogram: Sendable {
    private let state: Mutex<HistogramCounts>

    init(buckets: [Double] = latencyBuckets) {
        self.state = Mutex(HistogramCounts(buckets: buckets))
    }

    func observe(seconds: Double) {
        self.state.withLock { $0.observe(seconds: seconds) }
    }

    func snapshot() -> (cumulative: [UInt64], sum: Double, count: UInt64) {
        self.state.withLock { $0.snapshot() }
    }
}

/// One series of a `LabeledCounter`, resolved once (when a config loads) so that counting
/// through it is an atomic add: no label array, lookup or lock per request.
final class CounterSeries: Sendable {
    fileprivate let count = Atomic<Int>(0)

    func increment() { self.count.add(1, ordering: .relaxed) }
}

/// A counter family keyed by a bounded set of label values.
final class LabeledCounter: Sendable {
    let labelNames: [String]
    private let values = Mutex<[[String]: Double]>([:])
    /// Series handed out by `series(_:)`; their counts join `values` when read.
    private let resolved = Mutex<[[String]: CounterSeries]>([:])

    init(labelNames: [String]) { self.labelNames = labelNames }

    /// The series for `labels`, the same one on every call (a reload's counts continue).
    func series(_ labels: [String]) -> CounterSeries {
        self.resolved.withLock { resolved in
            if let known = resolved[labels] { return known }
            let created = CounterSeries()
            resolved[labels] = created
            return created
        }
    }

    /// Every value, with the resolved series' counts added in.
    private func merged() -> [[String]: Double] {
        var all = self.values.withLock { $0 }
        for (labels, series) in self.resolved.withLock({ $0 }) {
            let count = series.count.load(ordering: .relaxed)
            if count > 0 { all[labels, default: 0] += Double(count) }
        }
        return all
    }

    func increment(_ labels: [String], by amount: Double = 1) {
        self.values.withLock { $0[labels, default: 0] += amount }
    }

    func set(_ labels: [String], _ value: Double) {
        self.values.withLock { $0[labels] = value }
    }

    func value(_ labels: [String]) -> Double { self.merged()[labels] ?? 0 }

    /// Replaces every series at once (a gauge family whose members can disappear on reload).
    func replaceAll(_ values: [[String]: Double]) { self.values.withLock { $0 = values } }

    func snapshot() -> [([String], Double)] {
        Array(self.merged()).sorted { $0.0.lexicographicallyPrecedes($1.0) }
    }
}

/// The `protocol` of `gateway_requests_total` and of the access log.
enum ProtocolLabel: UInt8, Comparable {
    case http10, http11, http2

    init(_ version: HTTPVersion) {
        self = version.major == 2 ? .http2 : version.minor == 0 ? .http10 : .http11
    }

    var name: String {
        switch self {
        case .http10: "HTTP/1.0"
        case .http11: "HTTP/1.1"
        case .http2: "HTTP/2"
        }
    }

    static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// Everything one answered request moves for its route, under one lock per request (instead of
/// one for the count and one per histogram lookup and observation).
private final class RouteSeries {
    /// Labels as small numbers: hashing them per request is cheaper than hashing their text.
    struct CountKey: Hashable {
        var method: MethodLabel
        var status: Int
        var protocolName: ProtocolLabel
        var source: ResponseSource
    }

    /// `method` label values; any other method is `OTHER`, so a client cannot mint label values.
    enum MethodLabel: UInt8, Comparable {
        case delete, get, head, options, other, patch, post, put

        init(_ method: HTTPMethod) {
            switch method {
            case .GET: self = .get
            case .HEAD: self = .head
            case .POST: self = .post
            case .PUT: self = .put
            case .PATCH: self = .patch
            case .DELETE: self = .delete
            case .OPTIONS: self = .options
            default: self = .other
            }
        }

        var name: String {
            switch self {
            case .delete: "DELETE"
            case .get: "GET"
            case .head: "HEAD"
            case .options: "OPTIONS"
            case .other: "OTHER"
            case .patch: "PATCH"
            case .post: "POST"
            case .put: "PUT"
            }
        }

        static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    }

    /// Boxed so that counting a known series reads the dictionary instead of modifying it.
    final class Count {
        var value = 0
    }

    var counts: [CountKey: Count] = [:]
    var durations = HistogramCounts()
    /// Created on the first proxied request, so a route that never reached an upstream has no series.
    var upstreamDurations: HistogramCounts?
}

/// Every series of SPEC "Admin listener" `/metrics`. Labels are bounded: route names (not raw
/// paths), a fixed method set, status codes, policy names, reasons — never user ids or IPs.
final class GatewayMetrics: Sendable {
    /// `gateway_requests_total`, `gateway_request_duration_seconds` and
    /// `gateway_upstream_duration_seconds`, by route. The series are only touched under the lock.
    private let routes = Mutex<[String: RouteSeriesBox]>([:])

    /// `RouteSeries` is mutable state reached only under `routes`' lock.
    private struct RouteSeriesBox: @unchecked Sendable {
        let series: RouteSeries
    }
    let rateLimitDecisions = LabeledCounter(labelNames: ["policy", "decision"])
    let jwtRejections = LabeledCounter(labelNames: ["reason"])
    let redisErrors = LabeledCounter(labelNames: [])
    let redisEvents = LabeledCounter(labelNames: ["event"])
    let connections = LabeledCounter(labelNames: ["listener", "protocol"])
    let upstreamEndpointUp = LabeledCounter(labelNames: ["upstream", "endpoint"])
    let configReloads = LabeledCounter(labelNames: ["result"])
    let accessLogDropped = LabeledCounter(labelNames: [])
    let spansDropped = LabeledCounter(labelNames: ["reason"])
    let spansExported = LabeledCounter(labelNames: [])
    let upstreamRetries = LabeledCounter(labelNames: ["upstream"])
    let splitRequests = LabeledCounter(labelNames: ["route", "upstream"])
    let tunnelsActive = LabeledCounter(labelNames: ["route"])
    let tunnelBytes = LabeledCounter(labelNames: ["route", "direction"])
    /// notAfter of each served certificate, as a Unix time (set at start-up and on reload).
    let tlsCertificateExpiry = LabeledCounter(labelNames: ["listener", "name"])
    let cacheRequests = LabeledCounter(labelNames: ["route", "result"])
    let cacheStores = LabeledCounter(labelNames: ["route"])
    let cacheServedBytes = LabeledCounter(labelNames: ["route"])
    /// Fed by the event loops themselves (the group is made with it as its metrics delegate).
    let eventLoopTicks = EventLoopTicks()

    init() {}

    func recordRequest(
        route: String, method: HTTPMethod, status: Int, version: HTTPVersion, source: ResponseSource = .upstream,
        seconds: Double, upstreamSeconds: Double?
    ) {
        let key = RouteSeries.CountKey(method: .init(method), status: status, protocolName: .init(version), source: source)
        self.routes.withLock { routes in
            let series: RouteSeries
            if let known = routes[route] {
                series = known.series
            } else {
                series = RouteSeries()
                routes[route] = RouteSeriesBox(series: series)
            }
            if let count = series.counts[key] {
                count.value += 1
            } else {
                let count = RouteSeries.Count()
                count.value = 1
                series.counts[key] = count
            }
            series.durations.observe(seconds: seconds)
            if let upstreamSeconds {
                if series.upstreamDurations == nil { series.upstreamDurations = HistogramCounts() }
                series.upstreamDurations!.observe(seconds: upstreamSeconds)
            }
        }
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
        // Copied under the lock, rendered outside it.
        typealias Row = (route: String, counts: [(RouteSeries.CountKey, Int)], durations: HistogramCounts, upstream: HistogramCounts?)
        let rows: [Row] = self.routes.withLock { routes in
            routes.map { route, box in
                (route, box.series.counts.map { ($0.key, $0.value.value) }, box.series.durations, box.series.upstreamDurations)
            }
        }.sorted { $0.route < $1.route }
        func histograms(_ name: String, _ help: String, _ family: [(String, HistogramCounts)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
            for (route, histogram) in family {
                let (cumulative, sum, count) = histogram.snapshot()
                for (bound, value) in zip(histogram.buckets, cumulative) {
                    out += "\(name)_bucket" + Self.labelText(["route", "le"], [route, Self.number(bound)]) + " \(value)\n"
                }
                out += "\(name)_bucket" + Self.labelText(["route", "le"], [route, "+Inf"]) + " \(count)\n"
                out += "\(name)_sum" + Self.labelText(["route"], [route]) + " " + Self.number(sum) + "\n"
                out += "\(name)_count" + Self.labelText(["route"], [route]) + " \(count)\n"
            }
        }
        out += "# HELP gateway_requests_total Requests answered, by route, method, status, protocol and source (why).\n"
        out += "# TYPE gateway_requests_total counter\n"
        for row in rows {
            let counts = row.counts.sorted {
                ($0.0.method, $0.0.status, $0.0.protocolName, $0.0.source.rawValue)
                    < ($1.0.method, $1.0.status, $1.0.protocolName, $1.0.source.rawValue)
            }
            for (key, count) in counts {
                out += "gateway_requests_total" + Self.labelText(
                    ["route", "method", "status", "protocol", "source"],
                    [row.route, key.method.name, String(key.status), key.protocolName.name, key.source.name]
                ) + " \(count)\n"
            }
        }
        histograms("gateway_request_duration_seconds", "Time from request head to last response byte.",
                   rows.map { ($0.route, $0.durations) })
        histograms("gateway_upstream_duration_seconds", "Time from upstream request start to response head.",
                   rows.compactMap { row in row.upstream.map { (row.route, $0) } })
        counter("gateway_ratelimit_decisions_total", "Rate-limit decisions by policy.", self.rateLimitDecisions)
        counter("gateway_jwt_rejections_total", "Rejected bearer tokens by reason.", self.jwtRejections)
        counter("gateway_redis_errors_total", "Rate-limit store errors.", self.redisErrors)
        counter("gateway_redis_events_total", "Redis connection failures and recoveries, cluster MOVED/ASK and map refreshes, Sentinel master switches.", self.redisEvents)
        counter("gateway_connections", "Open client connections.", self.connections, type: "gauge")
        counter("gateway_upstream_endpoint_up", "1 when the endpoint is in rotation.", self.upstreamEndpointUp, type: "gauge")
        counter("gateway_config_reloads_total", "Config reloads by result.", self.configReloads)
        counter("gateway_upstream_retries_total", "Requests retried on another endpoint (within the retry budget).", self.upstreamRetries)
        counter("gateway_split_requests_total", "Requests of split routes, by the upstream the split chose.", self.splitRequests)
        counter("gateway_tunnels_active", "Open WebSocket tunnels.", self.tunnelsActive, type: "gauge")
        counter("gateway_tunnel_bytes_total", "Bytes relayed by ended tunnels (in: client to upstream).", self.tunnelBytes)
        counter("gateway_cache_requests_total", "Response-cache lookups by route and result (hit, miss, stale).", self.cacheRequests)
        counter("gateway_cache_stores_total", "Responses stored in the response cache.", self.cacheStores)
        counter("gateway_cache_served_bytes_total", "Body bytes answered from the response cache.", self.cacheServedBytes)
        counter("gateway_access_log_dropped_total", "Access log lines dropped because the writer fell behind.", self.accessLogDropped)
        counter("gateway_tls_certificate_expiry_seconds", "Certificate notAfter as a Unix time, by listener and certificate name.", self.tlsCertificateExpiry, type: "gauge")
        out += ProcessMetrics.render()
        out += self.eventLoopTicks.render()
        counter("gateway_spans_dropped_total", "Sampled spans not exported, by reason.", self.spansDropped)
        counter("gateway_spans_exported_total", "Spans the OTLP collector accepted.", self.spansExported)
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

/// The series of one upstream endpoint, held by the endpoint itself: a request records through
/// the endpoint it was sent to, with no lookup by label. One lock per observation.
final class EndpointStats: Sendable {
    /// What went wrong with an upstream request, for `gateway_upstream_endpoint_errors_total{kind}`.
    enum ErrorKind: Int, CaseIterable {
        /// The TCP connect failed or timed out.
        case connect
        /// `max_connections` reached and none freed within `connect_timeout`.
        case poolExhausted
        /// No response head within `response_timeout`.
        case timeout
        /// The connection closed or reset after the request went out.
        case reset
        /// The response was not HTTP/1.1 the gateway could relay.
        case `protocol`

        var name: String {
            switch self {
            case .connect: "connect"
            case .poolExhausted: "pool_exhausted"
            case .timeout: "timeout"
            case .reset: "reset"
            case .protocol: "protocol"
            }
        }
    }

    struct Counts {
        /// Responses by status class, index 0 for 1xx … 4 for 5xx.
        var responses = [UInt64](repeating: 0, count: 5)
        var errors = [UInt64](repeating: 0, count: ErrorKind.allCases.count)
        /// Request start to response head.
        var durations = HistogramCounts()
    }

    private let counts = Mutex(Counts())
    /// Requests waiting on any event loop for a connection slot (`max_connections` reached).
    let waiting = Atomic<Int>(0)

    init() {}

    func response(status: Int, seconds: Double?) {
        let index = min(max(status / 100 - 1, 0), 4)
        self.counts.withLock { counts in
            counts.responses[index] += 1
            if let seconds { counts.durations.observe(seconds: seconds) }
        }
    }

    func error(_ kind: ErrorKind) {
        self.counts.withLock { $0.errors[kind.rawValue] += 1 }
    }

    func snapshot() -> Counts { self.counts.withLock { $0 } }
}

extension GatewayMetrics {
    /// Per-endpoint requests, latency and errors, and the connection pool gauges, read from the
    /// running config's upstreams at scrape time. An endpoint's counters start at zero when a
    /// reload creates it anew (Prometheus reads that as a counter reset).
    static func renderEndpoints(_ clusters: [UpstreamCluster]) -> String {
        var out = ""
        let endpoints = clusters.sorted { $0.name < $1.name }.flatMap { cluster in
            cluster.endpoints.map { (cluster.name, $0, $0.stats.snapshot()) }
        }
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        out += "# HELP gateway_upstream_endpoint_requests_total Upstream responses by endpoint and status class.\n"
        out += "# TYPE gateway_upstream_endpoint_requests_total counter\n"
        for (upstream, endpoint, counts) in endpoints {
            for (index, count) in counts.responses.enumerated() where count > 0 {
                out += "gateway_upstream_endpoint_requests_total"
                    + labelText(["upstream", "endpoint", "class"], [upstream, endpoint.key, classes[index]]) + " \(count)\n"
            }
        }
        out += "# HELP gateway_upstream_endpoint_errors_total Upstream requests that got no usable response, by kind.\n"
        out += "# TYPE gateway_upstream_endpoint_errors_total counter\n"
        for (upstream, endpoint, counts) in endpoints {
            for kind in EndpointStats.ErrorKind.allCases {
                out += "gateway_upstream_endpoint_errors_total"
                    + labelText(["upstream", "endpoint", "kind"], [upstream, endpoint.key, kind.name])
                    + " \(counts.errors[kind.rawValue])\n"
            }
        }
        let name = "gateway_upstream_endpoint_duration_seconds"
        out += "# HELP \(name) Time from upstream request start to response head, by endpoint.\n# TYPE \(name) histogram\n"
        for (upstream, endpoint, counts) in endpoints {
            let (cumulative, sum, count) = counts.durations.snapshot()
            let labels = ["upstream", "endpoint"], values = [upstream, endpoint.key]
            for (bound, value) in zip(counts.durations.buckets, cumulative) {
                out += "\(name)_bucket" + labelText(labels + ["le"], values + [number(bound)]) + " \(value)\n"
            }
            out += "\(name)_bucket" + labelText(labels + ["le"], values + ["+Inf"]) + " \(count)\n"
            out += "\(name)_sum" + labelText(labels, values) + " " + number(sum) + "\n"
            out += "\(name)_count" + labelText(labels, values) + " \(count)\n"
        }
        out += "# HELP gateway_upstream_connections Upstream connections by endpoint: open (all event loops) and in_use.\n"
        out += "# TYPE gateway_upstream_connections gauge\n"
        for (upstream, endpoint, _) in endpoints {
            let open = endpoint.openConnections.load(ordering: .relaxed)
            let inUse = endpoint.outstanding.load(ordering: .relaxed)
            out += "gateway_upstream_connections" + labelText(["upstream", "endpoint", "state"], [upstream, endpoint.key, "open"]) + " \(open)\n"
            out += "gateway_upstream_connections" + labelText(["upstream", "endpoint", "state"], [upstream, endpoint.key, "in_use"]) + " \(inUse)\n"
        }
        out += "# HELP gateway_upstream_pending_requests Requests waiting for a connection slot (max_connections reached).\n"
        out += "# TYPE gateway_upstream_pending_requests gauge\n"
        for (upstream, endpoint, _) in endpoints {
            out += "gateway_upstream_pending_requests" + labelText(["upstream", "endpoint"], [upstream, endpoint.key])
                + " \(endpoint.stats.waiting.load(ordering: .relaxed))\n"
        }
        return out
    }
}
