import NIOCore
import NIOHTTP1
import Synchronization

/// Settings of one upstream, resolved at config load.
struct UpstreamSettings: Sendable {
    var connectTimeout: TimeAmount
    var responseTimeout: TimeAmount
    var maxConnections: Int
    /// Pooled connections idle longer than this are closed. Below Node.js' default
    /// `keepAliveTimeout` (5 s) so the gateway, not the upstream, closes first and a request
    /// never lands on a connection the upstream is closing.
    var idleTimeout: TimeAmount
    var loadBalancing: LoadBalancing = .roundRobin
    var consecutive5xxToEject = 5
    var baseEjectionTime: TimeAmount = .seconds(10)
    var retryAttempts = 1
    var retryMethods: Set<String> = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]
    var retryBudgetPercent = 20
    var healthCheck: HealthCheckConfig?

    /// The two timeouts a pooled connection's timer needs.
    var timeouts: UpstreamTimeouts { UpstreamTimeouts(idle: self.idleTimeout, response: self.responseTimeout) }
}

/// What a pooled connection's timer reads of its upstream's settings, passed per request in
/// place of `UpstreamSettings`, whose copy counted a reference for each of its sets and strings.
struct UpstreamTimeouts: Sendable {
    var idle: TimeAmount
    var response: TimeAmount
}

/// One `host:port` of an upstream. Shared by all event loops; its counters are atomics.
final class UpstreamEndpoint: Sendable {
    let host: String
    let port: Int
    /// Pre-resolved when `host` is an IP literal, so connecting needs no resolver.
    let address: SocketAddress?
    let key: String
    /// Open connections across all event loops (enforces `max_connections`).
    let openConnections = Atomic<Int>(0)
    /// Taken out of rotation by `POST /upstreams/NAME/endpoints/ADDR/drain` (admin listener).
    let adminDrained = Atomic<Bool>(false)
    private let downUntil = Atomic<Int64>(0)
    private let consecutiveFailures = Atomic<Int>(0)
    private let consecutive5xx = Atomic<Int>(0)
    private let ejections = Atomic<Int>(0)
    /// Requests in flight on this endpoint (for `least_outstanding`).
    let outstanding = Atomic<Int>(0)
    /// The active health check's verdict (true until a check says otherwise).
    let activeHealthy = Atomic<Bool>(true)
    /// The event loops' pools that connect here, so that one loop's freed slot or idle
    /// connection can serve a request waiting on another.
    let pools = EndpointPools()
    /// Per-endpoint requests, latency and errors (`/metrics`), recorded without a label lookup.
    let stats = EndpointStats()

    init(host: String, port: Int) {
        self.host = host
        self.port = port
        self.address = try? SocketAddress(ipAddress: host, port: port)
        self.key = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    func isUp(now: NIODeadline) -> Bool {
        !self.adminDrained.load(ordering: .relaxed) && self.activeHealthy.load(ordering: .relaxed) && self.downUntil.load(ordering: .relaxed) <= Int64(now.uptimeNanoseconds)
    }

    /// Passive outlier detection: `threshold` consecutive 5xx (or resets before a response) eject
    /// the endpoint for `base` × the number of ejections so far (capped at 8×), as Envoy does.
    func record5xx(threshold: Int, base: TimeAmount, now: NIODeadline) {
        let count = self.consecutive5xx.add(1, ordering: .relaxed).newValue
        guard count >= threshold else { return }
        self.consecutive5xx.store(0, ordering: .relaxed)
        let ejections = self.ejections.add(1, ordering: .relaxed).newValue
        let until = now + base * Int64(min(ejections, 8))
        self.downUntil.store(Int64(until.uptimeNanoseconds), ordering: .relaxed)
    }

    func recordResponseOK() {
        if self.consecutive5xx.load(ordering: .relaxed) != 0 { self.consecutive5xx.store(0, ordering: .relaxed) }
        if self.ejections.load(ordering: .relaxed) != 0 { self.ejections.store(0, ordering: .relaxed) }
    }

    /// A connect failure takes the endpoint out of rotation for a back-off that doubles with each
    /// consecutive failure (250 ms … 16 s), so a dead endpoint costs one failed connect per
    /// back-off instead of one per request.
    func recordFailure(now: NIODeadline) {
        let failures = self.consecutiveFailures.add(1, ordering: .relaxed).newValue
        let backoff = TimeAmount.milliseconds(250 << Int64(min(failures - 1, 6)))
        self.downUntil.store(Int64((now + backoff).uptimeNanoseconds), ordering: .relaxed)
    }

    func recordSuccess() {
        if self.consecutiveFailures.load(ordering: .relaxed) != 0 {
            self.consecutiveFailures.store(0, ordering: .relaxed)
            self.downUntil.store(0, ordering: .relaxed)
        }
    }
}

/// An upstream: its endpoints in round-robin order, skipping those that just failed.
final class UpstreamCluster: Sendable {
    let name: String
    let endpoints: [UpstreamEndpoint]
    let settings: UpstreamSettings
    let timeouts: UpstreamTimeouts
    private let cursor = Atomic<Int>(0)
    /// Retry budget in hundredths of a retry: each request adds `retryBudgetPercent`, a retry
    /// costs 100. Capped so a quiet period cannot bank a retry storm.
    private let retryTokens = Atomic<Int>(1000)
    /// Retries made (for `gateway_upstream_retries_total`).
    let retries = Atomic<Int>(0)
    /// `settings.retryMethods`, asked per request without a string.
    private let retriedMethods: HTTPMethodSet

    init(name: String, endpoints: [UpstreamEndpoint], settings: UpstreamSettings) {
        self.name = name
        self.endpoints = endpoints
        self.settings = settings
        self.timeouts = settings.timeouts
        self.retriedMethods = HTTPMethodSet(settings.retryMethods)
    }

    /// How many times a request with `method` may be retried (`retries.methods`, `retries.attempts`).
    func retryAttempts(for method: HTTPMethod) -> Int {
        self.retriedMethods.contains(method) ? self.settings.retryAttempts : 0
    }

    /// Counts a request toward the retry budget.
    func requestStarted() {
        let budget = self.settings.retryBudgetPercent
        guard budget > 0 else { return }
        while true {
            let current = self.retryTokens.load(ordering: .relaxed)
            if current >= 1000 { return }
            if self.retryTokens.compareExchange(
                expected: current, desired: min(1000, current + budget), ordering: .relaxed
            ).exchanged { return }
        }
    }

    /// Takes one retry from the budget, if there is one.
    func takeRetry() -> Bool {
        while true {
            let current = self.retryTokens.load(ordering: .relaxed)
            if current < 100 { return false }
            if self.retryTokens.compareExchange(expected: current, desired: current - 100, ordering: .relaxed).exchanged {
                self.retries.add(1, ordering: .relaxed)
                return true
            }
        }
    }

    /// Endpoints to try for one request, in order: the round-robin pick (or, with
    /// `least_outstanding`, the one with fewest requests in flight) first, then the others that
    /// are up. Empty when every endpoint is down (→ 503 `no_healthy_upstream`).
    func candidates(now: NIODeadline) -> [UpstreamEndpoint] {
        let count = self.endpoints.count
        if count == 1 { return self.endpoints[0].isUp(now: now) ? self.endpoints : [] }
        if self.settings.loadBalancing == .leastOutstanding {
            let start = self.cursor.add(1, ordering: .relaxed).oldValue
            var up: [UpstreamEndpoint] = []
            up.reserveCapacity(count)
            for offset in 0..<count {
                let endpoint = self.endpoints[Int(UInt(bitPattern: start &+ offset) % UInt(count))]
                if endpoint.isUp(now: now) { up.append(endpoint) }
            }
            // Stable sort keeps the rotation among equals, so ties still spread.
            return up.enumerated().sorted {
                let (a, b) = ($0.element.outstanding.load(ordering: .relaxed), $1.element.outstanding.load(ordering: .relaxed))
                return a != b ? a < b : $0.offset < $1.offset
            }.map(\.element)
        }
        let start = self.cursor.add(1, ordering: .relaxed).oldValue
        var result: [UpstreamEndpoint] = []
        result.reserveCapacity(count)
        for offset in 0..<count {
            let endpoint = self.endpoints[Int(UInt(bitPattern: start &+ offset) % UInt(count))]
            if endpoint.isUp(now: now) { result.append(endpoint) }
        }
        return result
    }

    var hasHealthyEndpoint: Bool {
        let now = NIODeadline.now()
        return self.endpoints.contains { $0.isUp(now: now) }
    }
}

/// The per-loop pools of one endpoint, seen from the endpoint. `max_connections` is shared across
/// event loops while connections and waiting requests belong to one loop each: without this, a
/// slot freed (or an idle connection kept) on one loop never reaches a request waiting on another,
/// which then sits out `connect_timeout` and gets 503. Off the steady path: a pool touches it only
/// when a request has to wait, and the release path reads one atomic.
final class EndpointPools: Sendable {
    /// What another loop can ask of a pool; each runs the work on the pool's own loop.
    struct Member: Sendable {
        /// Serve a waiting request for the endpoint if a slot is free.
        var wake: @Sendable (UpstreamEndpoint) -> Void
        /// Close one idle connection to the endpoint, freeing its slot.
        var shed: @Sendable (UpstreamEndpoint) -> Void
        var waiting = false
    }

    private let members = Mutex<[ObjectIdentifier: Member]>([:])
    private let waitingPools = Atomic<Int>(0)

    /// Whether some pool has requests waiting for a slot.
    var someoneWaits: Bool { self.waitingPools.load(ordering: .relaxed) > 0 }

    /// How many pools (event loops) have requests waiting for a slot.
    var waitingPoolCount: Int { self.waitingPools.load(ordering: .relaxed) }

    func join(
        _ pool: ObjectIdentifier, wake: @escaping @Sendable (UpstreamEndpoint) -> Void,
        shed: @escaping @Sendable (UpstreamEndpoint) -> Void
    ) {
        self.members.withLock { members in
            if members[pool] == nil { members[pool] = Member(wake: wake, shed: shed) }
        }
    }

    func setWaiting(_ pool: ObjectIdentifier, _ waiting: Bool) {
        self.members.withLock { members in
            guard var member = members[pool], member.waiting != waiting else { return }
            member.waiting = waiting
            members[pool] = member
            self.waitingPools.add(waiting ? 1 : -1, ordering: .relaxed)
        }
    }

    /// Lets one other pool with waiting requests try for the slot just freed.
    func wakeOneWaiting(besides pool: ObjectIdentifier, for endpoint: UpstreamEndpoint) {
        let wake = self.members.withLock { members in
            members.first { $0.key != pool && $0.value.waiting }?.value.wake
        }
        wake?(endpoint)
    }

    /// Asks every other pool to close one idle connection, so a waiting request gets its slot.
    func askOthersToShed(besides pool: ObjectIdentifier, for endpoint: UpstreamEndpoint) {
        let sheds = self.members.withLock { members in members.filter { $0.key != pool }.map(\.value.shed) }
        for shed in sheds { shed(endpoint) }
    }
}
