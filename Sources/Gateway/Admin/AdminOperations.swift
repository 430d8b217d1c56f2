import NIOCore
import NIOHTTP1
import Synchronization

/// Rollout state that outlives config reloads: the SIGTERM drain, an operator's `POST /health/fail`,
/// and upstream endpoints taken out of rotation by hand.
final class OperationsState: Sendable {
    /// SIGTERM received: readiness is 503 while the listeners still accept (`timeouts.drain_delay`).
    let draining = Atomic<Bool>(false)
    /// `POST /health/fail` until `POST /health/ok`.
    let manuallyFailed = Atomic<Bool>(false)
    /// Set once anything asked for readiness. With nobody polling it, a drain delay would keep a
    /// stopping process alive for nobody's benefit, so the drain skips it.
    let readinessProbed = Atomic<Bool>(false)
    /// `upstream/endpoint` keys drained by hand; re-applied to every new runtime snapshot.
    private let drainedEndpoints = Mutex<Set<String>>([])

    var notReadyReasons: [String] {
        var reasons: [String] = []
        if self.draining.load(ordering: .relaxed) { reasons.append("draining") }
        if self.manuallyFailed.load(ordering: .relaxed) { reasons.append("failed by POST /health/fail") }
        return reasons
    }

    func setDrained(_ drained: Bool, upstream: String, endpoint: String) {
        let key = upstream + "/" + endpoint
        self.drainedEndpoints.withLock { set in
            if drained { set.insert(key) } else { set.remove(key) }
        }
    }

    func applyEndpointDrains(to clusters: [String: UpstreamCluster]) {
        let drained = self.drainedEndpoints.withLock { $0 }
        for (name, cluster) in clusters {
            for endpoint in cluster.endpoints {
                endpoint.adminDrained.store(drained.contains(name + "/" + endpoint.key), ordering: .relaxed)
            }
        }
    }
}

/// Admin-listener operations for rollouts: `POST /health/fail`, `POST /health/ok`, and
/// `POST`/`DELETE /upstreams/NAME/endpoints/ADDR/drain` (drain, undo).
enum AdminOperations {
    static func response(_ head: RequestHead, runtime: GatewayRuntime, allocator: ByteBufferAllocator) -> LocalResponse? {
        let operations = runtime.status.operations
        switch (head.method, head.uri) {
        case (.POST, "/health/fail"):
            operations.manuallyFailed.store(true, ordering: .relaxed)
            return .json(.ok, #"{"result":"failed","ready":false}"#, allocator: allocator)
        case (.POST, "/health/ok"):
            operations.manuallyFailed.store(false, ordering: .relaxed)
            return .json(.ok, #"{"result":"ok"}"#, allocator: allocator)
        default:
            break
        }
        guard head.method == .POST || head.method == .DELETE,
              let (upstream, endpoint) = Self.endpointDrainTarget(head.uri)
        else { return nil }
        guard let cluster = runtime.clusters[upstream] else {
            return .json(.notFound, "{\"error\":\"no upstream named \(JSON.escaped(upstream))\"}", allocator: allocator)
        }
        guard let target = cluster.endpoints.first(where: { $0.key == endpoint }) else {
            let known = cluster.endpoints.map { "\"" + JSON.escaped($0.key) + "\"" }.joined(separator: ",")
            return .json(.notFound, "{\"error\":\"upstream \(JSON.escaped(upstream)) has no endpoint \(JSON.escaped(endpoint))\",\"endpoints\":[\(known)]}", allocator: allocator)
        }
        let drained = head.method == .POST
        operations.setDrained(drained, upstream: upstream, endpoint: endpoint)
        target.adminDrained.store(drained, ordering: .relaxed)
        return .json(
            .ok,
            "{\"upstream\":\"\(JSON.escaped(upstream))\",\"endpoint\":\"\(JSON.escaped(endpoint))\",\"drained\":\(drained)}",
            allocator: allocator
        )
    }

    /// `/upstreams/NAME/endpoints/ADDR/drain` → (NAME, ADDR); `ADDR` may be percent-encoded (`%3A`).
    static func endpointDrainTarget(_ uri: String) -> (String, String)? {
        let parts = uri.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 6, parts[0].isEmpty, parts[1] == "upstreams", parts[3] == "endpoints", parts[5] == "drain",
              !parts[2].isEmpty, !parts[4].isEmpty
        else { return nil }
        return (String(parts[2]), Self.percentDecoded(parts[4]))
    }

    private static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "%"), iterator.count >= 2,
               let value = UInt8(String(decoding: iterator.prefix(2), as: UTF8.self), radix: 16) {
                bytes.append(value)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
