import Synchronization

/// Keys known to be over their limit, remembered until the moment they free a request, so an
/// abusive client's repeated requests get their 429 without a store round trip (STYLE habit 12).
///
/// Never denies wrongly: an entry lives until `now + resetAfterMs` of a denial whose policy had no
/// request left — the first instant a cost-1 request could pass even if no other gateway counted
/// anything meanwhile (usage only falls with time). Other instances can only add usage, so the key
/// is over limit at least that long everywhere. Bounded by `capacity`: a full cache drops expired
/// entries, then the oldest ones (forgetting only costs a store round trip). Thread-safe.
public final class DeniedCache: Sendable {
    public let capacity: Int
    private let state: Mutex<State>

    public init(capacity: Int = 10_000) {
        precondition(capacity >= 1)
        self.capacity = capacity
        state = Mutex(State(capacity: capacity))
    }

    /// Remembers the enforced policies that denied `decision` (no-op for an allowed request).
    public func record(_ decision: MultiDecision, now: Int64) {
        guard !decision.allowed else { return }
        let denied = decision.decisions.filter {
            !$0.policy.shadow && !$0.decision.allowed && $0.decision.remaining == 0 && $0.decision.resetAfterMs > 0
        }
        guard !denied.isEmpty else { return }
        state.withLock { s in
            for d in denied { s.remember(d.key, until: now + d.decision.resetAfterMs, now: now) }
        }
    }

    /// Remembers `key` as over limit until `untilMs`.
    public func remember(key: String, untilMs: Int64, now: Int64) {
        guard untilMs > now else { return }
        state.withLock { $0.remember(key, until: untilMs, now: now) }
    }

    /// A denied answer when some enforced policy's key is known to be over limit at `now`; nil
    /// means "ask the store". The answer lists only the cached policies (remaining 0).
    public func check(_ requests: [(PolicySpec, String)], now: Int64) -> MultiDecision? {
        let hits: [(PolicySpec, String, Int64)] = state.withLock { s in
            requests.compactMap { spec, key in
                guard !spec.shadow, let until = s.until(key, now: now) else { return nil }
                return (spec, key, until)
            }
        }
        guard !hits.isEmpty else { return nil }
        let decisions = hits.map { spec, key, until in
            PolicyDecision(
                policy: spec, key: key,
                decision: Decision(allowed: false, limit: spec.limit, remaining: 0,
                                   resetAfterMs: until - now, retryAfterMs: until - now),
                counted: false)
        }
        return MultiDecision(allowed: false, decisions: decisions)
    }

    public var count: Int { state.withLock { $0.entries.count } }

    struct State: Sendable {
        var entries: [String: (until: Int64, seq: UInt64)] = [:]
        var order = RecencyOrder()
        var writesSinceSweep = 0
        let capacity: Int

        init(capacity: Int) { self.capacity = capacity }

        mutating func until(_ key: String, now: Int64) -> Int64? {
            guard let e = entries[key] else { return nil }
            if e.until > now { return e.until }
            entries[key] = nil
            return nil
        }

        mutating func remember(_ key: String, until: Int64, now: Int64) {
            if let e = entries[key], e.until >= until { return }
            writesSinceSweep += 1
            if entries[key] == nil && entries.count >= capacity {
                // Sweep at most every capacity/8 inserts so a flood of new keys stays O(1) amortised.
                if writesSinceSweep >= max(1, capacity / 8) {
                    writesSinceSweep = 0
                    entries = entries.filter { $0.value.until > now }
                }
                var o = order
                order = RecencyOrder()
                while entries.count >= capacity, let victim = o.popOldest(isCurrent: { entries[$0]?.seq == $1 }) {
                    entries[victim] = nil
                }
                order = o
            }
            entries[key] = (until, order.touch(key))
            var o = order
            order = RecencyOrder()
            o.compactIfNeeded(liveCount: entries.count) { entries[$0]?.seq == $1 }
            order = o
        }
    }
}
