/// Which counting scheme a policy uses.
public enum RateLimitAlgorithm: String, Sendable, Hashable, CaseIterable {
    /// Weighted two-counter approximation, O(1) memory per key. See `SlidingWindowLimiter`.
    case slidingWindow = "sliding_window"
    /// Exact log of admitted request times, O(limit) memory per key. See `SlidingLogLimiter`.
    case slidingLog = "sliding_log"
}

/// One configured policy, e.g. `per_ip: { limit: 100, window: 15m, algorithm: sliding_window }`.
///
/// Values are validated by config loading; the initialiser only traps on nonsense that config
/// validation must already have rejected (limit < 1, window < 1 s, prefix outside 0...128).
public struct PolicySpec: Sendable, Hashable {
    public var name: String
    public var limit: Int
    public var windowSeconds: Int
    public var algorithm: RateLimitAlgorithm
    /// A shadow policy is counted and reported (metrics, logs) but never denies a request.
    public var shadow: Bool
    /// IPv6 client addresses are truncated to this many bits before keying (one /64 = one client).
    public var ipv6Prefix: Int

    public init(
        name: String,
        limit: Int,
        windowSeconds: Int,
        algorithm: RateLimitAlgorithm = .slidingWindow,
        shadow: Bool = false,
        ipv6Prefix: Int = 64
    ) {
        precondition(limit >= 1, "rate limit must be >= 1")
        precondition(windowSeconds >= 1, "rate limit window must be >= 1s")
        precondition((0...128).contains(ipv6Prefix), "ipv6Prefix must be within 0...128")
        self.name = name
        self.limit = limit
        self.windowSeconds = windowSeconds
        self.algorithm = algorithm
        self.shadow = shadow
        self.ipv6Prefix = ipv6Prefix
    }

    public var windowMs: Int64 { Int64(windowSeconds) * 1000 }
}
