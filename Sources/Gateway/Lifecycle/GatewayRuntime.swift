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
}

/// One immutable snapshot of everything derived from the configuration (STYLE habit 8): the route
/// table, upstream clusters and settings. The hot path reads it without locks.
final class GatewayRuntime: Sendable {
    let routes: RouteTable
    let clusters: [String: UpstreamCluster]
    let traffic: TrafficSettings
    let configHash: String
    let startedAt: ContinuousClock.Instant
    /// True once every listener is bound (for `/health/ready`).
    let listenersBound = Atomic<Bool>(false)
    /// The first TLS listener's bound port, for `redirect_to_https` (known only after binding
    /// when the config asks for port 0). 0 = no TLS listener.
    let httpsPort = Atomic<Int>(0)

    init(routes: RouteTable, clusters: [String: UpstreamCluster], traffic: TrafficSettings, configHash: String) {
        self.routes = routes
        self.clusters = clusters
        self.traffic = traffic
        self.configHash = configHash
        self.startedAt = .now
    }
}

/// Per-event-loop resources (the upstream connection pool). Looked up once per connection.
final class LoopResources: @unchecked Sendable {
    // Only touched on `eventLoop`; the registry that hands it out is immutable after start-up.
    let eventLoop: EventLoop
    let pool: UpstreamConnectionPool

    init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
        self.pool = UpstreamConnectionPool(eventLoop: eventLoop)
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
