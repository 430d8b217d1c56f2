import NIOCore
import Synchronization

/// What a listener does with requests.
enum ListenerRole: Sendable, Equatable {
    /// Routes and proxies (public listeners).
    case proxy
    /// Answers 308 to the HTTPS listener for everything but `/health*`.
    /// The target port is the first TLS listener's bound port (`GatewayRuntime.httpsPort`).
    case redirect
    /// Health (and later metrics/config) only.
    case admin
}

/// A listener as the request pipeline sees it.
struct ListenerInfo: Sendable {
    var name: String
    var role: ListenerRole
    var isTLS: Bool
    var scheme: String { self.isTLS ? "https" : "http" }
}

/// Request-time limits and timeouts, resolved once.
struct TrafficSettings: Sendable {
    var maxHeaderBytes: Int
    var maxBodyBytes: Int
    var clientHeaderTimeout: TimeAmount
    var idleTimeout: TimeAmount
    var drainTimeout: TimeAmount
    var tunnelIdleTimeout: TimeAmount = .hours(1)
    /// `timeouts.drain_delay`: how long readiness reports 503 before the listeners close.
    var drainDelay: TimeAmount = .seconds(5)
}

/// One immutable snapshot of everything derived from the configuration (STYLE habit 8): the route
/// table, upstream clusters and settings. The hot path reads it without locks.
final class GatewayRuntime: Sendable {
    let routes: RouteTable
    let clusters: [String: UpstreamCluster]
    let traffic: TrafficSettings
    let configHash: String
    /// Client-IP resolution (`client_ip`), with the `cloudflare` preset expanded.
    let clientIP: ClientIPResolver
    /// The `cors` section, for requests that match no route (a 404 a browser can read).
    let cors: CORSPolicy?
    /// Bearer-token verification; `nil` without a `jwt` section (then every route is `auth: none`).
    let authenticator: Authenticator?
    /// Request fields never forwarded from an untrusted peer beyond `HeaderRewriter`'s fixed
    /// list: the claim headers the gateway itself sets, and `client_ip.header`.
    let removedFromUntrustedPeer: FieldNameSet
    /// From a trusted proxy, only the claim headers go (its forwarding headers are kept).
    let removedFromTrustedPeer: FieldNameSet
    /// The two sets plus `authorization`, for a verified token read from that field and not
    /// forwarded: dropped in the rewrite's one pass over the fields.
    let removedFromUntrustedPeerWithToken: FieldNameSet
    let removedFromTrustedPeerWithToken: FieldNameSet
    /// `rate_limits`; nil when no route lists a policy.
    let rateLimiter: RateLimitService?
    let startedAt: ContinuousClock.Instant
    /// Server state that outlives this snapshot (carried over on reload).
    let status: ServerStatus

    init(
        routes: RouteTable, clusters: [String: UpstreamCluster], traffic: TrafficSettings, configHash: String,
        clientIP: ClientIPResolver = ClientIPResolver(trustedNetworks: [], header: "cf-connecting-ip"),
        cors: CORSPolicy? = nil, authenticator: Authenticator? = nil, status: ServerStatus = ServerStatus(),
        rateLimiter: RateLimitService? = nil
    ) {
        self.status = status
        self.rateLimiter = rateLimiter
        self.routes = routes
        self.clusters = clusters
        self.traffic = traffic
        self.configHash = configHash
        self.clientIP = clientIP
        self.cors = cors
        self.authenticator = authenticator
        // Client-sent copies of claim headers are removed on every route, whatever its auth mode
        // (SPEC): an upstream must be able to trust X-User-Id. The two defaults are always in the
        // set, so a config that renames them cannot reopen the old names.
        let claimHeaders = FieldNameSet((authenticator?.forwardClaims.map(\.header) ?? []) + ["x-user-id", "x-user-role"])
        self.removedFromTrustedPeer = claimHeaders
        self.removedFromUntrustedPeer = claimHeaders.union([clientIP.header])
        self.removedFromTrustedPeerWithToken = self.removedFromTrustedPeer.union(["authorization"])
        self.removedFromUntrustedPeerWithToken = self.removedFromUntrustedPeer.union(["authorization"])
        self.startedAt = status.startedAt
    }
}

/// What the running server knows beyond its config; shared by every runtime snapshot.
final class ServerStatus: Sendable {
    /// True once every listener is bound (for `/health/ready`).
    let listenersBound = Atomic<Bool>(false)
    /// The first TLS listener's bound port, for `redirect_to_https` (known only after binding
    /// when the config asks for port 0). 0 = no TLS listener.
    let httpsPort = Atomic<Int>(0)
    let startedAt = ContinuousClock.now
    /// Rate-limit counts and Redis connections survive reloads.
    let rateLimitStores = RateLimitStores()
    /// Rollout and manual-failover state (`/health/fail`, endpoint drains, SIGTERM).
    let operations = OperationsState()
    let responseCacheStores = ResponseCacheStores()
}

/// The current runtime snapshot. Each request reads it once when it starts, so a reload swaps
/// what new requests see while in-flight ones finish on the snapshot they started with.
final class RuntimeHolder: Sendable {
    private let runtime: Mutex<GatewayRuntime>
    private let replacements = Atomic<UInt64>(0)

    init(_ runtime: GatewayRuntime) { self.runtime = Mutex(runtime) }

    var current: GatewayRuntime { self.runtime.withLock { $0 } }

    /// Moves on every `replace`, after the new runtime is in place: a connection that kept a
    /// snapshot checks this (no lock) and takes `current` only when it moved.
    var generation: UInt64 { self.replacements.load(ordering: .acquiring) }

    func replace(with runtime: GatewayRuntime) {
        self.runtime.withLock { $0 = runtime }
        self.replacements.add(1, ordering: .releasing)
    }
}

/// A connection's copy of the running config, taken again only when the holder's generation
/// moved: a request reads it without the holder's lock.
struct RuntimeSnapshot {
    private var runtime: GatewayRuntime?
    private var generation: UInt64 = 0

    /// The config for a request starting now. The generation is read before the runtime, so a
    /// reload in between is seen as a move on the next call.
    mutating func current(from holder: RuntimeHolder) -> GatewayRuntime {
        let generation = holder.generation
        if let runtime = self.unchanged(at: generation) { return runtime }
        let current = holder.current
        self.runtime = current
        self.generation = generation
        return current
    }

    /// The kept runtime, if `generation` is the one it was taken at. Not mutating: the common
    /// case reads the snapshot without an exclusive access to it, which made the caller retain
    /// the holder it passed for the length of the call.
    func unchanged(at generation: UInt64) -> GatewayRuntime? {
        generation == self.generation ? self.runtime : nil
    }
}

/// Per-event-loop resources (the upstream connection pool, the connection timers, the flushes
/// gathered per tick). Looked up once per connection.
final class LoopResources: @unchecked Sendable {
    // Only touched on `eventLoop`; the registry that hands it out is immutable after start-up.
    let eventLoop: EventLoop
    let timers: LoopTimers
    let flushes: TickFlushes
    let pool: UpstreamConnectionPool

    init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
        self.timers = LoopTimers(eventLoop: eventLoop)
        self.flushes = TickFlushes(eventLoop: eventLoop)
        self.pool = UpstreamConnectionPool(eventLoop: eventLoop, timers: self.timers, flushes: self.flushes)
    }
}

/// Maps each event loop of the group to its resources.
struct LoopResourceRegistry: Sendable {
    private let byLoop: [ObjectIdentifier: LoopResources]

    init(loops: [EventLoop]) {
        var byLoop: [ObjectIdentifier: LoopResources] = [:]
        for loop in loops { byLoop[ObjectIdentifier(loop)] = LoopResources(eventLoop: loop) }
        self.byLoop = byLoop
    }

    func resources(for loop: EventLoop) -> LoopResources {
        if let resources = self.byLoop[ObjectIdentifier(loop)] { return resources }
        preconditionFailure("event loop not part of the gateway's group")
    }

    var all: [LoopResources] { Array(self.byLoop.values) }
}
