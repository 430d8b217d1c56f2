internal import Yams

/// `routes[].cache`: a shared response cache for the route's cacheable GET/HEAD responses.
public struct RouteCacheConfig: Sendable, Equatable {
    /// What partitions entries beyond method, host, path, query and `Vary`.
    public enum KeyBy: String, Sendable, Equatable, CaseIterable {
        /// One entry for everyone; requests bearing `Authorization` are never cached.
        case shared
        /// One entry per verified token subject (`claim:sub`); requests without one are not cached.
        case claimSub = "claim:sub"
    }

    /// Where entries live besides the in-process LRU.
    public enum Store: String, Sendable, Equatable, CaseIterable {
        case memory
        /// Also in the `redis.url` server, shared by every gateway instance using it.
        case redis
    }

    /// A response bigger than this is passed through and not stored.
    public var maxObjectBytes: Int = 1024 * 1024
    /// Budget of the in-process LRU (bodies and heads) for this route.
    public var memoryBytes: Int = 64 * 1024 * 1024
    public var keyBy: KeyBy = .shared
    public var store: Store = .memory

    public init() {}
}

extension GatewayConfig {
    static func decodeRouteCache(_ node: Node, at path: String, reader r: ConfigReader) -> RouteCacheConfig? {
        guard let m = r.mapping(node, at: path, keys: ["max_object_bytes", "memory_bytes", "key_by", "store"]) else { return nil }
        var config = RouteCacheConfig()
        if let node = m["max_object_bytes"], let size = r.size(node, at: m.path("max_object_bytes"), minimum: 1) {
            config.maxObjectBytes = size
        }
        if let node = m["memory_bytes"], let size = r.size(node, at: m.path("memory_bytes"), minimum: 1) {
            config.memoryBytes = size
        }
        if let node = m["key_by"], let keyBy: RouteCacheConfig.KeyBy = r.choice(node, at: m.path("key_by")) {
            config.keyBy = keyBy
        }
        if let node = m["store"], let store: RouteCacheConfig.Store = r.choice(node, at: m.path("store")) {
            config.store = store
        }
        if config.maxObjectBytes > config.memoryBytes {
            r.fail(m.path("max_object_bytes"), "must not exceed memory_bytes (\(config.memoryBytes) bytes)")
        }
        return config
    }

    /// `store: redis` needs a server to talk to; `key_by: claim:sub` a verified token.
    static func checkRouteCaches(_ routes: [RouteConfig], redis: RedisConfig, reader r: ConfigReader) {
        for (index, route) in routes.enumerated() {
            guard let cache = route.cache else { continue }
            if cache.store == .redis, !redis.isEnabled {
                r.fail("routes[\(index)].cache.store", "redis needs the redis section (redis.url, or redis.nodes / redis.sentinels)")
            }
            if cache.keyBy == .claimSub, route.auth == .none {
                r.fail("routes[\(index)].cache.key_by", "claim:sub needs auth: optional or required on the route")
            }
        }
    }
}
