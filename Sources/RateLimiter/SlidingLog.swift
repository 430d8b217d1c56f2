/// Exact sliding log: the times of the admitted requests of the trailing window.
///
/// A request at time `t` occupies the window during `[t, t + W)`. A request of cost `k` passes
/// when the live entries plus `k` fit the limit; it then adds `k` entries at `now`. Since nothing
/// is added past the limit the log never holds more than `limit` live entries — right for strict,
/// low limits such as login (5/min). No over- or under-admission: at most `limit` requests in any
/// interval shorter than `W`, and a denied client may retry exactly when its oldest entry ages out.
public struct SlidingLogLimiter: Sendable, Hashable {
    public var limit: Int
    public let windowMs: Int64
    /// Admitted request times, ascending; may still contain aged-out entries until the next count.
    public private(set) var timestamps: [Int64]

    public init(limit: Int, windowMs: Int64, timestamps: [Int64] = []) {
        precondition(limit >= 1 && windowMs >= 1)
        self.limit = limit
        self.windowMs = windowMs
        self.timestamps = timestamps.sorted()
    }

    /// Index of the first entry still live at `now` (entries with `t ≤ now − W` have aged out).
    private func firstLive(_ now: Int64) -> Int {
        let cutoff = now - windowMs
        var lo = 0, hi = timestamps.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if timestamps[mid] <= cutoff { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    private func waitMs(_ now: Int64, first: Int, _ k: Int) -> Int64? {
        if k > limit { return nil }
        let excess = (timestamps.count - first) + k - limit
        if excess <= 0 { return 0 }
        // The `excess`-th oldest live entry has to age out.
        return timestamps[first + excess - 1] + windowMs - now
    }

    private func decision(_ now: Int64, first: Int, allowed: Bool, cost: Int) -> Decision {
        let rem = max(0, limit - (timestamps.count - first))
        let reset = rem >= limit ? 0 : (waitMs(now, first: first, rem + 1) ?? 0)
        let retry: Int64? = allowed ? nil : (waitMs(now, first: first, cost) ?? windowMs)
        return Decision(allowed: allowed, limit: limit, remaining: rem, resetAfterMs: reset, retryAfterMs: retry)
    }

    public func peek(now: Int64, cost: Int = 1) -> Decision {
        let first = firstLive(now)
        let allowed = (timestamps.count - first) + cost <= limit
        return decision(now, first: first, allowed: allowed, cost: cost)
    }

    /// Decides and, when allowed, records `cost` entries at `now`. A denied request changes nothing.
    public mutating func decide(now: Int64, cost: Int = 1) -> Decision {
        precondition(cost >= 1)
        let first = firstLive(now)
        guard (timestamps.count - first) + cost <= limit else {
            return decision(now, first: first, allowed: false, cost: cost)
        }
        timestamps.removeFirst(first)
        // Keep ascending order even if the injected clock stepped back.
        var at = timestamps.count
        while at > 0, timestamps[at - 1] > now { at -= 1 }
        timestamps.insert(contentsOf: repeatElement(now, count: cost), at: at)
        return decision(now, first: 0, allowed: true, cost: cost)
    }

    /// After this instant every entry has aged out.
    public var expiresAt: Int64 { (timestamps.last ?? Int64.min / 2) + windowMs }
}
