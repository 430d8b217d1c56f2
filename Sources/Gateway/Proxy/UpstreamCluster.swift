import NIOCore
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
    private let downUntil = Atomic<Int64>(0)
    private let consecutiveFailures = Atomic<Int>(0)

    init(host: String, port: Int) {
        self.host = host
        self.port = port
        self.address = try? SocketAddress(ipAddress: host, port: port)
        self.key = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    func isUp(now: NIODeadline) -> Bool {
        self.downUntil.load(ordering: .relaxed) <= Int64(now.uptimeNanoseconds)
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
    private let cursor = Atomic<Int>(0)

    init(name: String, endpoints: [UpstreamEndpoint], settings: UpstreamSettings) {
        self.name = name
        self.endpoints = endpoints
        self.settings = settings
    }

    /// Endpoints to try for one request, in order: the round-robin pick first, then the others that
    /// are up. Empty when every endpoint is down (→ 503 `no_healthy_upstream`).
    func candidates(now: NIODeadline) -> [UpstreamEndpoint] {
        let count = self.endpoints.count
        if count == 1 { return self.endpoints[0].isUp(now: now) ? self.endpoints : [] }
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
