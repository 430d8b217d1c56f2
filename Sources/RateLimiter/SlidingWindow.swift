/// Stored state of a weighted sliding window: the counts of the current fixed window and the one
/// before it. Two integers per key whatever the traffic.
public struct SlidingWindowState: Sendable, Hashable {
    /// Start (ms since epoch) of the fixed window `current` counts.
    public var windowStart: Int64
    /// Requests counted in `[windowStart, windowStart + W)`.
    public var current: Int64
    /// Requests counted in `[windowStart - W, windowStart)`.
    public var previous: Int64

    public init(windowStart: Int64 = 0, current: Int64 = 0, previous: Int64 = 0) {
        self.windowStart = windowStart
        self.current = current
        self.previous = previous
    }
}

/// Weighted two-counter sliding window (the "sliding window counter" of Cloudflare/Kong/nginx):
///
///     usage(now) = previous × (W − elapsed) / W + current
///
/// where `elapsed = now − windowStart` and `W` is the window. A request of cost `k` passes when
/// `usage + k ≤ limit`. All comparisons are done multiplied through by `W`, in integers, so the
/// Swift maths and the Redis Lua script (`RedisRateLimitScript`) agree to the millisecond.
///
/// ## Error bound
/// The weight `(W − elapsed)/W` assumes the previous window's requests were spread uniformly over
/// it. With `p` requests in the previous window, the true number of requests in the trailing
/// window `(now − W, now]` differs from the estimate by:
/// - over-admission: at most `p × elapsed / W` (all of the previous window's requests were at its
///   very end), so the trailing window can hold up to `limit + ⌊p·elapsed/W⌋ < 2 × limit`;
/// - under-admission: at most `p × (W − elapsed) / W` (they were all at its start, already aged
///   out), so a request can be refused while the trailing window holds only
///   `limit − ⌈p·(W − elapsed)/W⌉`.
/// Stronger, for any interval of length `d ≤ W` the limiter admits at most
/// `limit + ⌊limit · d / W⌋` requests. A boundary burst is therefore bounded: where a fixed window
/// admits `2 × limit` within a second either side of the boundary, this admits at most
/// `limit + ⌈limit·2s/W⌉` (101 for 100/15 min). Approaching `2 × limit` needs a burst at the end of
/// one window followed by a steady trickle over the whole next window. With uniform traffic the
/// estimate is exact. Use `SlidingLogLimiter` where no over-admission is acceptable.
public struct SlidingWindowLimiter: Sendable, Hashable {
    public var limit: Int
    public let windowMs: Int64
    public private(set) var state: SlidingWindowState

    public init(limit: Int, windowMs: Int64, state: SlidingWindowState = .init()) {
        precondition(limit >= 1 && windowMs >= 1)
        self.limit = limit
        self.windowMs = windowMs
        self.state = state
    }

    /// The state as seen at `now`: counts re-based onto the fixed window containing `now`.
    struct View {
        var start: Int64
        var elapsed: Int64
        var current: Int64
        var previous: Int64
    }

    func view(at now: Int64) -> View {
        // A clock that stepped back must not resurrect an old window: clamp into the stored one.
        let t = max(now, state.windowStart)
        let start = t - floorMod(t, windowMs)
        var cur: Int64 = 0, prev: Int64 = 0
        if state.windowStart == start {
            cur = state.current
            prev = state.previous
        } else if state.windowStart == start - windowMs {
            prev = state.current
        }
        return View(start: start, elapsed: t - start, current: cur, previous: prev)
    }

    private func fits(_ v: View, _ k: Int64) -> Bool {
        let w = windowMs
        return v.previous * (w - v.elapsed) + (v.current + k) * w <= Int64(limit) * w
    }

    private func remaining(_ v: View) -> Int {
        let w = windowMs
        let free = Int64(limit) * w - v.previous * (w - v.elapsed) - v.current * w
        return free <= 0 ? 0 : Int(free / w)
    }

    /// Milliseconds until `k` more units fit, if nothing else is counted meanwhile;
    /// `nil` when `k > limit` (never). Usage only falls with time, so this is the first instant.
    func waitMs(_ v: View, _ k: Int64) -> Int64? {
        let w = windowMs, lim = Int64(limit)
        if k > lim { return nil }
        if fits(v, k) { return 0 }
        if v.current + k <= lim, v.previous > 0 {
            // Same fixed window: need previous·(W − e) ≤ (limit − current − k)·W.
            let need = w - ((lim - v.current - k) * w) / v.previous
            return need - v.elapsed  // need == W means "at the next window start"
        }
        // Next fixed window: previous := current, current := 0. Here current > limit − k ≥ 0.
        let need2 = w - ((lim - k) * w) / v.current
        return (w - v.elapsed) + need2
    }

    private func decision(_ v: View, allowed: Bool, k: Int64) -> Decision {
        let rem = remaining(v)
        let reset = rem >= limit ? 0 : (waitMs(v, Int64(rem) + 1) ?? 0)
        let retry: Int64? = allowed ? nil : (waitMs(v, k) ?? windowMs)
        return Decision(allowed: allowed, limit: limit, remaining: rem, resetAfterMs: reset, retryAfterMs: retry)
    }

    /// What `decide` would answer, without counting anything.
    public func peek(now: Int64, cost: Int = 1) -> Decision {
        let v = view(at: now)
        return decision(v, allowed: fits(v, Int64(cost)), k: Int64(cost))
    }

    /// Decides and, when allowed, counts the request. A denied request changes nothing.
    /// A `cost` above `limit` can never pass; it is denied with a retry of one window.
    public mutating func decide(now: Int64, cost: Int = 1) -> Decision {
        precondition(cost >= 1)
        var v = view(at: now)
        let k = Int64(cost)
        guard fits(v, k) else { return decision(v, allowed: false, k: k) }
        v.current += k
        state = SlidingWindowState(windowStart: v.start, current: v.current, previous: v.previous)
        return decision(v, allowed: true, k: k)
    }

    /// After this instant the state is equivalent to an empty one and may be dropped.
    public var expiresAt: Int64 { state.windowStart + 2 * windowMs }
}
