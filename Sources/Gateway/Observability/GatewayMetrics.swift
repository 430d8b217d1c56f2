import NIOHTTP1
import Synchronization

/// Latency buckets in seconds: sub-millisecond resolution for gateway-added latency, up to the
/// 15 s default response timeout.
let latencyBuckets: [Double] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15,
]

/// A fixed number of 64-bit cells that any thread changes without a lock, with relaxed ordering
/// (counts read at scrape time need no more). The cells are one allocation that never moves,
/// reached through a pointer: `Atomic` cannot be an array's element, and an object per cell cost
/// a retain and a release per count (10 per proxied request).
struct AtomicCells: @unchecked Sendable {
    /// Owns the cells; the pointer beside it is what counting reads, with no reference count.
    private final class Storage {
        let cells: UnsafeMutablePointer<Atomic<UInt64>>
        let count: Int

        init(count: Int) {
            self.count = count
            self.cells = .allocate(capacity: count)
            for index in 0..<count { (self.cells + index).initialize(to: Atomic(0)) }
        }

        deinit {
            self.cells.deinitialize(count: self.count)
            self.cells.deallocate()
        }
    }

    private let storage: Storage
    private let cells: UnsafeMutablePointer<Atomic<UInt64>>
    let count: Int

    init(count: Int) {
        self.storage = Storage(count: count)
        self.cells = self.storage.cells
        self.count = count
    }

    @inline(__always)
    func add(_ amount: UInt64, at index: Int) {
        precondition(index >= 0 && index < self.count, "cell index out of range")
        self.cells[index].add(amount, ordering: .relaxed)
    }

    @inline(__always)
    func load(_ index: Int) -> UInt64 {
        precondition(index >= 0 && index < self.count, "cell index out of range")
        return self.cells[index].load(ordering: .relaxed)
    }

    /// Sets the cell to `desired` if it holds `expected`; returns what it held.
    @inline(__always)
    func compareExchange(at index: Int, expected: UInt64, desired: UInt64) -> UInt64 {
        precondition(index >= 0 && index < self.count, "cell index out of range")
        return self.cells[index].compareExchange(expected: expected, desired: desired, ordering: .relaxed).original
    }
}

/// A Prometheus histogram with fixed buckets whose observations are relaxed atomic adds: the
/// request path records into it with no lock, from any event loop. A scrape reads each cell once;
/// the count is the sum of the cells it read, so `+Inf` and `_count` always agree, and `_sum` may
/// be one in-flight observation ahead or behind, as Prometheus clients allow.
final class LatencyHistogram: Sendable {
    /// Upper bounds in seconds (`le`).
    let buckets: [Double]
    /// One cell per bucket and one for observations above the last bound.
    private let cells: AtomicCells
    /// Nanoseconds: an integer sum can be added atomically, a `Double` cannot.
    private let nanoseconds = Atomic<UInt64>(0)

    init(buckets: [Double] = latencyBuckets) {
        self.buckets = buckets
        self.cells = AtomicCells(count: buckets.count + 1)
    }

    func observe(seconds: Double) {
        // A plain loop: `firstIndex(where:)` costs a closure and, unspecialized, allocations.
        var index = 0
        while index < self.buckets.count, seconds > self.buckets[index] { index += 1 }
        self.cells.add(1, at: index)
        if seconds > 0 { self.nanoseconds.add(UInt64(min(seconds, 1e9) * 1e9), ordering: .relaxed) }
    }

    /// Cumulative bucket counts (`le`, without `+Inf`), sum and count, as Prometheus wants them.
    func snapshot() -> (cumulative: [UInt64], sum: Double, count: UInt64) {
        var running: UInt64 = 0
        var cumulative: [UInt64] = []
        cumulative.reserveCapacity(self.buckets.count)
        for index in self.buckets.indices {
            running += self.cells.load(index)
            cumulative.append(running)
        }
        let count = running + self.cells.load(self.buckets.count)
        return (cumulative, Double(self.nanoseconds.load(ordering: .relaxed)) / 1e9, count)
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

/// Everything one answered request moves for its route: resolved when a config loads (each
/// `Route` holds its own), so a request records through it with atomic adds — no lookup by route
/// name, no lock.
final class RouteSeries: Sendable {
    /// Labels as small numbers, packed into one word that a table slot can hold atomically.
    struct CountKey: Hashable {
        var method: MethodLabel
        var status: Int
        var protocolName: ProtocolLabel
        var source: ResponseSource

        /// Never 0 (the mark of an empty slot): bit 63 is always set.
        var packed: UInt64 {
            1 << 63 | UInt64(self.method.rawValue) << 48 | UInt64(self.protocolName.rawValue) << 40
                | UInt64(self.source.rawValue) << 32 | UInt64(UInt32(clamping: self.status))
        }

        init(method: MethodLabel, status: Int, protocolName: ProtocolLabel, source: ResponseSource) {
            self.method = method
            self.status = status
            self.protocolName = protocolName
            self.source = source
        }

        init?(packed: UInt64) {
            guard let method = MethodLabel(rawValue: UInt8(truncatingIfNeeded: packed >> 48)),
                  let protocolName = ProtocolLabel(rawValue: UInt8(truncatingIfNeeded: packed >> 40)),
                  let source = ResponseSource(rawValue: UInt8(truncatingIfNeeded: packed >> 32))
            else { return nil }
            self.init(method: method, status: Int(UInt32(truncatingIfNeeded: packed)), protocolName: protocolName, source: source)
        }
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

    /// `gateway_requests_total`: an open-addressed table whose slots are claimed by a
    /// compare-exchange of their key, so counting takes no lock; a key beyond the table's slots
    /// (a route answering more label combinations than it has) is counted in a locked dictionary.
    private static let slotCount = 64
    private let keys = AtomicCells(count: RouteSeries.slotCount)
    private let counts = AtomicCells(count: RouteSeries.slotCount)
    private let overflow = Mutex<[UInt64: UInt64]>([:])
    let durations = LatencyHistogram()
    /// Shown once a request of the route reached an upstream.
    let upstreamDurations = LatencyHistogram()

    func record(_ key: CountKey, seconds: Double, upstreamSeconds: Double?) {
        self.count(key.packed)
        self.durations.observe(seconds: seconds)
        if let upstreamSeconds { self.upstreamDurations.observe(seconds: upstreamSeconds) }
    }

    private func count(_ key: UInt64) {
        // Fibonacci hashing spreads the few bits that differ (status, source) over the slots (the
        // top 6 bits: 64 slots).
        var slot = Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 58)
        for _ in 0..<Self.slotCount {
            var held = self.keys.load(slot)
            if held == 0 {
                // Claim the empty slot, or find that another request just claimed it (maybe for this key).
                held = self.keys.compareExchange(at: slot, expected: 0, desired: key)
                if held == 0 { held = key }
            }
            if held == key {
                self.counts.add(1, at: slot)
                return
            }
            slot = (slot + 1) & (Self.slotCount - 1)
        }
        self.overflow.withLock { $0[key, default: 0] += 1 }
    }

    /// Every count above zero (a slot claimed by a request still counting reads 0 and is left out).
    func countSnapshot() -> [(CountKey, Int)] {
        var rows: [UInt64: UInt64] = self.overflow.withLock { $0 }
        for slot in 0..<Self.slotCount {
            let key = self.keys.load(slot)
            let count = self.counts.load(slot)
            if key != 0 && count > 0 { rows[key, default: 0] += count }
        }
        return rows.compactMap { key, count in CountKey(packed: key).map { ($0, Int(count)) } }
    }
}

/// Every series of SPEC "Admin listener" `/metrics`. Labels are bounded: route names (not raw
/// paths), a fixed method set, status codes, policy names, reasons — never user ids or IPs.
final class GatewayMetrics: Sendable {
    /// `gateway_requests_total`, `gateway_request_duration_seconds` and
    /// `gateway_upstream_duration_seconds`, by route name: the same series for a name across
    /// reloads, so its counts continue. Locked only to resolve a name, never to count.
    private let routes = Mutex<[String: RouteSeries]>([:])
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

    /// The series of the route named `route`, created on first use.
    func routeSeries(_ route: String) -> RouteSeries {
        self.routes.withLock { routes in
            if let known = routes[route] { return known }
            let created = RouteSeries()
            routes[route] = created
            return created
        }
    }

    /// Counts one answered request into `series`, or into the series named `route` when the
    /// request had none resolved (no route matched, or a local answer before routing).
    func recordRequest(
        route: String, series: RouteSeries? = nil, method: HTTPMethod, status: Int, version: HTTPVersion,
        source: ResponseSource = .upstream, seconds: Double, upstreamSeconds: Double?
    ) {
        let key = RouteSeries.CountKey(method: .init(method), status: status, protocolName: .init(version), source: source)
        (series ?? self.routeSeries(route)).record(key, seconds: seconds, upstreamSeconds: upstreamSeconds)
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
        // Resolved but never answered routes are left out, as they were before series were resolved ahead.
        typealias Row = (route: String, counts: [(RouteSeries.CountKey, Int)], durations: LatencyHistogram, upstream: LatencyHistogram)
        let rows: [Row] = self.routes.withLock { $0 }
            .map { route, series in (route, series.countSnapshot(), series.durations, series.upstreamDurations) }
            .filter { !$0.counts.isEmpty }
            .sorted { $0.route < $1.route }
        func histograms(_ name: String, _ help: String, _ family: [(String, LatencyHistogram)], skipEmpty: Bool = false) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
            for (route, histogram) in family {
                let (cumulative, sum, count) = histogram.snapshot()
                // A route's upstream series appears once one of its requests reached an upstream.
                if skipEmpty && count == 0 { continue }
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
                   rows.map { ($0.route, $0.upstream) }, skipEmpty: true)
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
/// the endpoint it was sent to, with no lookup by label and no lock.
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

    /// What a scrape reads: the counters as they were, the histogram itself (read as it renders).
    struct Counts {
        /// Responses by status class, index 0 for 1xx … 4 for 5xx.
        var responses: [UInt64]
        var errors: [UInt64]
        /// Request start to response head.
        var durations: LatencyHistogram
    }

    // Atomic adds from any event loop: recording a response takes no lock.
    private let responses = AtomicCells(count: 5)
    private let errors = AtomicCells(count: ErrorKind.allCases.count)
    private let durations = LatencyHistogram()
    /// Requests waiting on any event loop for a connection slot (`max_connections` reached).
    let waiting = Atomic<Int>(0)

    init() {}

    func response(status: Int, seconds: Double?) {
        self.responses.add(1, at: min(max(status / 100 - 1, 0), 4))
        if let seconds { self.durations.observe(seconds: seconds) }
    }

    func error(_ kind: ErrorKind) {
        self.errors.add(1, at: kind.rawValue)
    }

    func snapshot() -> Counts {
        Counts(
            responses: (0..<5).map { self.responses.load($0) },
            errors: ErrorKind.allCases.map { self.errors.load($0.rawValue) },
            durations: self.durations
        )
    }
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
