import Synchronization

/// Rate-limit state kept in this process: for development, tests, and single-instance deployments
/// (`REDIS_URL` unset). Gives exactly the answers of `RateLimitTable` while keys are not evicted.
///
/// - Thread safety: keys are spread over `shardCount` shards, each behind its own `Mutex`, picked by
///   the key's hash tag (`RateLimitKey.hashTag`) — like a Redis Cluster slot — so one client's keys
///   share a shard and a multi-policy check usually takes a single lock. When keys span shards the
///   locks are taken in ascending shard order (no deadlock) and held for the whole all-or-nothing
///   decision.
/// - Memory: at most `maxKeys` keys (split evenly over the shards). Expired keys — state equivalent
///   to empty — are swept on insert, amortised (every `max(sweepInterval, keys in shard / 2)` writes);
///   a full shard sweeps, and if still full evicts the least recently written key. Evicting a live
///   key forgets its count (fails open for that client), so size `maxKeys` above the expected
///   number of active clients × policies.
public final class InProcessRateLimitStore: Sendable {
    public let maxKeys: Int
    private let shards: [Shard]

    public init(maxKeys: Int = 100_000, shardCount: Int = 16, sweepInterval: Int = 1024) {
        precondition(maxKeys >= 1 && shardCount >= 1 && sweepInterval >= 1)
        self.maxKeys = maxKeys
        let n = min(shardCount, maxKeys)
        shards = (0..<n).map { i in
            Shard(capacity: maxKeys / n + (i < maxKeys % n ? 1 : 0), sweepInterval: sweepInterval)
        }
    }

    /// All-or-nothing check of one request against its policies; see `MultiPolicy`.
    public func check(_ requests: [(PolicySpec, String)], now: Int64, cost: Int = 1) -> MultiDecision {
        if requests.isEmpty { return MultiDecision(allowed: true, decisions: []) }
        if requests.count == 1 { return self.checkOne(requests[0].0, requests[0].1, now: now, cost: cost) }
        let shardOf = requests.map { shardIndex($0.1) }
        let ids = Array(Set(shardOf)).sorted()
        var taken: [ShardState] = []
        taken.reserveCapacity(ids.count)
        return withShards(ids, 0, &taken) { states in
            func pos(_ key: String) -> Int { ids.firstIndex(of: self.shardIndex(key))! }
            let (decision, writes) = MultiPolicy.check(requests, now: now, cost: cost) { key in
                states[pos(key)].entries[key]?.limiter
            }
            for (key, limiter) in writes {
                states[pos(key)].write(key, limiter, now: now)
            }
            return decision
        }
    }

    /// `check` of one policy, the common request: `MultiPolicy`'s rule for a single key, under
    /// one shard lock, without its shard list, dictionaries and trial copies (about ten
    /// allocations a request). `singlePolicyRequestsSameAnswersAsPureMaths` holds both to one answer.
    private func checkOne(_ spec: PolicySpec, _ key: String, now: Int64, cost: Int) -> MultiDecision {
        self.shards[self.shardIndex(key)].state.withLock { state in
            let found = state.entries.index(forKey: key)
            let original = found.map { state.entries.values[$0].limiter.adapted(to: spec) } ?? PolicyLimiter(policy: spec)
            var trial = original
            let decision = trial.decide(now: now, cost: cost)
            if decision.allowed || spec.shadow {
                // A shadow policy that would deny is not counted: the rule an enforced one follows.
                if decision.allowed { state.write(key, trial, found: found, now: now) }
                return MultiDecision(allowed: true, decisions: [
                    PolicyDecision(policy: spec, key: key, decision: decision, counted: decision.allowed),
                ])
            }
            return MultiDecision(allowed: false, decisions: [
                PolicyDecision(policy: spec, key: key, decision: original.peek(now: now, cost: cost), counted: false),
            ])
        }
    }

    /// Number of keys held (a snapshot; shards are read one at a time).
    public var count: Int { shards.reduce(0) { $0 + $1.state.withLock { $0.entries.count } } }

    /// Removes every expired key now; returns how many. (Inserts also sweep, amortised.)
    @discardableResult
    public func sweep(now: Int64) -> Int {
        shards.reduce(0) { $0 + $1.state.withLock { $0.sweep(now: now) } }
    }

    private func shardIndex(_ key: String) -> Int {
        var h = Hasher()
        h.combine(RateLimitKey.hashTag(of: key))
        return Int(UInt(bitPattern: h.finalize()) % UInt(shards.count))
    }

    /// Locks `ids[pos...]` in order, moving each shard's state out into `taken` (a swap, so no
    /// copy-on-write copy happens) and back before the lock is released.
    private func withShards<R: Sendable>(
        _ ids: [Int], _ pos: Int, _ taken: inout [ShardState], _ body: (inout [ShardState]) -> R
    ) -> R {
        if pos == ids.count { return body(&taken) }
        return shards[ids[pos]].state.withLock { state in
            taken.append(ShardState(capacity: 0, sweepInterval: 1))
            swap(&taken[pos], &state)
            defer { swap(&taken[pos], &state) }
            return withShards(ids, pos + 1, &taken, body)
        }
    }
}

private final class Shard: Sendable {
    let state: Mutex<ShardState>
    init(capacity: Int, sweepInterval: Int) {
        state = Mutex(ShardState(capacity: capacity, sweepInterval: sweepInterval))
    }
}

struct ShardState: Sendable {
    struct Entry: Sendable {
        var limiter: PolicyLimiter
        var expiresAt: Int64
        var seq: UInt64
    }

    var entries: [String: Entry] = [:]
    var order = RecencyOrder()
    let capacity: Int
    let sweepInterval: Int
    var writesSinceSweep = 0

    init(capacity: Int, sweepInterval: Int) {
        self.capacity = capacity
        self.sweepInterval = sweepInterval
    }

    mutating func write(_ key: String, _ limiter: PolicyLimiter, now: Int64) {
        write(key, limiter, found: entries.index(forKey: key), now: now)
    }

    /// `write` for a caller that has just looked `key` up in this state (`found`: where it is,
    /// nil when absent): a key already held, the common write, is replaced in place, and the
    /// request's one look-up serves both its read and its write.
    mutating func write(_ key: String, _ limiter: PolicyLimiter, found: Dictionary<String, Entry>.Index?, now: Int64) {
        var found = found
        writesSinceSweep += 1
        if writesSinceSweep >= max(sweepInterval, entries.count / 2) {
            sweep(now: now)
            found = entries.index(forKey: key)  // the sweep rebuilt the table: indices are stale
        }
        if let index = found {
            let seq = order.touch(key)
            entries.values[index] = Entry(limiter: limiter, expiresAt: limiter.expiresAt, seq: seq)
            compactOrder()
            return
        }
        if entries.count >= capacity {
            // Full: expired keys go first (a sweep at most every capacity/8 writes keeps this
            // amortised O(1)), then the least recently written ones.
            if writesSinceSweep >= max(1, capacity / 8) { sweep(now: now) }
            // `order` is moved into a local so the closures can read `entries` without
            // copying the dictionary (a copy would make the next write copy-on-write it).
            var o = order
            order = RecencyOrder()
            while entries.count >= capacity,
                  let victim = o.popOldest(isCurrent: { entries[$0]?.seq == $1 }) {
                entries[victim] = nil
            }
            order = o
        }
        let seq = order.touch(key)
        entries[key] = Entry(limiter: limiter, expiresAt: limiter.expiresAt, seq: seq)
        compactOrder()
    }

    private mutating func compactOrder() {
        var o = order
        order = RecencyOrder()
        o.compactIfNeeded(liveCount: entries.count) { entries[$0]?.seq == $1 }
        order = o
    }

    @discardableResult
    mutating func sweep(now: Int64) -> Int {
        writesSinceSweep = 0
        let before = entries.count
        entries = entries.filter { $0.value.expiresAt > now }
        compactOrder()
        return before - entries.count
    }
}
