import NIOCore
import NIOHTTP1
import RedisClient

/// `/health`, `/health/live`, `/health/ready` on every listener; `/health/detailed` on the admin
/// listener only (SPEC "Admin listener").
enum Health {
    static let version = BuildInfo.version

    static func response(
        path: Substring,
        method: HTTPMethod,
        listener: ListenerInfo,
        runtime: GatewayRuntime,
        allocator: ByteBufferAllocator
    ) -> LocalResponse? {
        guard method == .GET || method == .HEAD else { return nil }
        switch path {
        case "/health":
            return .json(.ok, #"{"status":"ok"}"#, allocator: allocator)
        case "/health/live":
            return .json(.ok, #"{"status":"live"}"#, allocator: allocator)
        case "/health/ready":
            runtime.status.operations.readinessProbed.store(true, ordering: .relaxed)
            let reasons = notReadyReasons(runtime)
            if reasons.isEmpty { return .json(.ok, #"{"status":"ready"}"#, allocator: allocator) }
            let list = reasons.map { "\"\(JSON.escaped($0))\"" }.joined(separator: ",")
            return .json(.serviceUnavailable, #"{"status":"not_ready","reasons":["# + list + "]}", allocator: allocator)
        case "/health/detailed" where listener.role == .admin:
            runtime.status.operations.readinessProbed.store(true, ordering: .relaxed)
            return .json(.ok, detailed(runtime), allocator: allocator)
        default:
            return nil
        }
    }

    static func notReadyReasons(_ runtime: GatewayRuntime) -> [String] {
        var reasons = runtime.status.operations.notReadyReasons
        if !runtime.status.listenersBound.load(ordering: .relaxed) { reasons.append("listeners not bound") }
        for (name, cluster) in runtime.clusters.sorted(by: { $0.key < $1.key }) where !cluster.hasHealthyEndpoint {
            reasons.append("upstream \(name) has no healthy endpoint")
        }
        return reasons
    }

    static func detailed(_ runtime: GatewayRuntime) -> String {
        let uptime = ContinuousClock.now - runtime.startedAt
        let now = NIODeadline.now()
        var upstreams: [String] = []
        for (name, cluster) in runtime.clusters.sorted(by: { $0.key < $1.key }) {
            let endpoints = cluster.endpoints.map { endpoint in
                "{\"endpoint\":\"\(JSON.escaped(endpoint.key))\",\"state\":\"\(endpoint.isUp(now: now) ? "up" : "down")\","
                    + "\"open_connections\":\(endpoint.openConnections.load(ordering: .relaxed))}"
            }
            upstreams.append("\"\(JSON.escaped(name))\":[\(endpoints.joined(separator: ","))]")
        }
        let ready = notReadyReasons(runtime).isEmpty
        return "{\"status\":\"\(ready ? "ready" : "not_ready")\",\"version\":\"\(version)\","
            + "\"uptime_seconds\":\(uptime.components.seconds),\"config_hash\":\"\(runtime.configHash)\","
            + "\"upstreams\":{\(upstreams.joined(separator: ","))},"
            + "\"redis\":" + (runtime.rateLimiter?.healthJSON ?? #"{"state":"not_used"}"#) + "}"
    }
}

extension Health {
    /// `redis` in `/health/detailed`: up when every server the client needs has a connection
    /// (for Sentinel: the master), with one row per node and the cluster and Sentinel counters.
    static func redisJSON(_ client: any RedisCommandSender, lastDecisionMicros latency: Int) -> String {
        let nodes = client.nodeStates
        let needed = nodes.filter { $0.role != "sentinel" && ($0.slots ?? 1) > 0 }
        let up = !needed.isEmpty && needed.allSatisfy { $0.connections > 0 }
        let connected = needed.reduce(0) { $0 + $1.connections }
        var extra = ""
        if let cluster = client as? RedisClusterClient {
            extra = ",\"mode\":\"cluster\",\"moved\":\(cluster.movedCount.load(ordering: .relaxed)),"
                + "\"ask\":\(cluster.askCount.load(ordering: .relaxed)),\"map_refreshes\":\(cluster.refreshCount.load(ordering: .relaxed))"
        } else if let sentinel = client as? RedisSentinelClient {
            extra = ",\"mode\":\"sentinel\",\"master\":\"\(JSON.escaped(sentinel.masterAddress ?? ""))\","
                + "\"master_switches\":\(sentinel.switchCount.load(ordering: .relaxed))"
        }
        let rows = nodes.map { n in
            "{\"address\":\"\(JSON.escaped(n.address))\",\"role\":\"\(n.role)\",\"state\":\"\(n.connections > 0 ? "up" : "down")\","
                + "\"connections\":\(n.connections)" + (n.slots.map { ",\"slots\":\($0)" } ?? "") + "}"
        }
        return "{\"state\":\"\(up ? "up" : "down")\",\"connections\":\(connected)" + extra
            + (latency >= 0 ? ",\"last_decision_us\":\(latency)" : "") + ",\"nodes\":[\(rows.joined(separator: ","))]}"
    }
}
