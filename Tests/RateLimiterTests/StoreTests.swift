import Dispatch
import Foundation
import Synchronization
import Testing
@testable import RateLimiter

@Suite struct StoreTests {
    @Test func sameAnswersAsPureMaths() {
        let store = InProcessRateLimitStore(maxKeys: 10_000, shardCount: 16, sweepInterval: 4)
        var table = RateLimitTable()
        let policies = [spec("per_ip", 20, 10), spec("login", 3, 5, .slidingLog),
                        spec("shadow", 2, 3, .slidingLog, shadow: true)]
        var rng = SplitMix64(seed: 8)
        for step in randomTraffic(policies: policies, clients: 5, steps: 3000, maxStepMs: 700, start: 1_000_000, seed: 7) {
            // Some requests mix clients, so their keys span shards (multi-lock path).
            let extra = Bool.random(using: &rng) ? [(policies[0], "gw:rl:{c\(step.client + 10)}:per_ip")] : []
            let all = step.requests + extra
            #expect(store.check(all, now: step.now) == table.check(policies: all.map { ($0.0, key: $0.1) }, now: step.now))
        }
    }

    /// One policy per request takes the store's single-key path: the same answers again,
    /// shadow policies and denials included.
    @Test func singlePolicyRequestsSameAnswersAsPureMaths() {
        let store = InProcessRateLimitStore(maxKeys: 10_000, shardCount: 16, sweepInterval: 4)
        var table = RateLimitTable()
        let policies = [spec("per_ip", 20, 10), spec("login", 3, 5, .slidingLog),
                        spec("shadow", 2, 3, .slidingLog, shadow: true)]
        var rng = SplitMix64(seed: 9)
        var denied = 0
        for step in randomTraffic(policies: policies, clients: 3, steps: 3000, maxStepMs: 300, start: 1_000_000, seed: 11) {
            let one = [step.requests[Int(rng.next() % UInt64(step.requests.count))]]
            let got = store.check(one, now: step.now)
            #expect(got == table.check(policies: one.map { ($0.0, key: $0.1) }, now: step.now))
            if !got.allowed { denied += 1 }
        }
        #expect(denied > 100, "the traffic never hit a limit")
    }

    @Test func boundedByMaxKeys() {
        let store = InProcessRateLimitStore(maxKeys: 32, shardCount: 4, sweepInterval: 1_000_000)
        let p = spec("per_ip", 10, 60)
        for i in 0..<1000 {
            #expect(store.check([(p, "gw:rl:{c\(i)}:per_ip")], now: 0).allowed)
            #expect(store.count <= 32)
        }
        #expect(store.count >= 28)  // shards fill up to their share, not far below it
    }

    @Test func evictsExpiredFirstThenOldest() {
        let store = InProcessRateLimitStore(maxKeys: 4, shardCount: 1, sweepInterval: 1_000_000)
        let short = spec("short", 10, 1), long = spec("long", 10, 1000)
        _ = store.check([(short, "a")], now: 0)          // expires at 2 s
        for k in ["b", "c", "d"] { _ = store.check([(long, k), (long, k)], now: 0) }
        #expect(store.count == 4)
        _ = store.check([(long, "e")], now: 5000)        // full: the expired "a" goes
        #expect(store.check([(long, "b")], now: 5000).decisions[0].decision.remaining == 7)  // b kept
        _ = store.check([(long, "f")], now: 5000)        // full, nothing expired: oldest write ("c") goes
        #expect(store.count == 4)
        #expect(store.check([(long, "d")], now: 5000).decisions[0].decision.remaining == 7)  // d kept
        #expect(store.check([(long, "c")], now: 5000).decisions[0].decision.remaining == 9)  // c forgotten
    }

    /// A key written several times in a row holds one place in the eviction order: its last
    /// write's, and it is evicted when that write is the oldest.
    @Test func repeatedWritesKeepTheirLastPlaceInTheEvictionOrder() {
        let store = InProcessRateLimitStore(maxKeys: 3, shardCount: 1, sweepInterval: 1_000_000)
        let p = spec("long", 10, 1000)
        for _ in 0..<3 { _ = store.check([(p, "a")], now: 0) }
        _ = store.check([(p, "b")], now: 0)
        for _ in 0..<2 { _ = store.check([(p, "a")], now: 0) }   // order of last writes: b, a
        _ = store.check([(p, "c")], now: 0)                      // b, a, c
        _ = store.check([(p, "d")], now: 0)                      // full: b goes; a, c, d
        _ = store.check([(p, "e")], now: 0)                      // full: a goes; c, d, e
        #expect(store.count == 3)
        #expect(store.check([(p, "a")], now: 0).decisions[0].decision.remaining == 9)  // a forgotten
    }

    @Test func sweepsExpiredKeys() {
        let store = InProcessRateLimitStore(maxKeys: 10_000, shardCount: 1, sweepInterval: 16)
        let p = spec("p", 10, 1)
        for i in 0..<100 { _ = store.check([(p, "old\(i)")], now: 0) }
        #expect(store.count == 100)
        for i in 0..<100 { _ = store.check([(p, "new\(i)")], now: 10_000) }  // amortised sweeps run
        #expect(store.count == 100)
        #expect(store.sweep(now: 20_000) == 100)
        #expect(store.count == 0)
    }

    @Test func concurrentHammeringAllowsExactlyLimit() {
        let store = InProcessRateLimitStore()
        let p = spec("per_ip", 100, 900)
        let q = spec("per_route", 1000, 900)
        let allowed = Atomic<Int>(0)
        // Keys in different hash tags, listed in both orders: exercises ordered multi-shard locking.
        let a = "gw:rl:{ip:203.0.113.7}:per_ip", b = "gw:rl:{route:x}:per_route"
        DispatchQueue.concurrentPerform(iterations: 2000) { i in
            let reqs = i % 2 == 0 ? [(p, a), (q, b)] : [(q, b), (p, a)]
            if store.check(reqs, now: 1_000_000).allowed { allowed.add(1, ordering: .relaxed) }
        }
        #expect(allowed.load(ordering: .relaxed) == 100)
        #expect(store.check([(q, b)], now: 1_000_000).decisions[0].decision.remaining == 899)
    }
}

@Suite struct DeniedCacheTests {
    @Test func remembersUntilResetThenForgets() {
        let cache = DeniedCache(capacity: 100)
        var table = RateLimitTable()
        let login = spec("login", 2, 60, .slidingLog), perIP = spec("per_ip", 100, 900)
        let reqs: [(PolicySpec, String)] = [(login, "l"), (perIP, "ip")]
        _ = table.check(policies: [(login, "l")], now: 0)
        _ = table.check(policies: [(login, "l")], now: 1000)
        let denied = table.check(policies: reqs.map { ($0.0, key: $0.1) }, now: 30_000)
        #expect(!denied.allowed)
        cache.record(denied, now: 30_000)
        #expect(cache.count == 1)  // only the denying policy's key
        let hit = cache.check(reqs, now: 45_000)
        #expect(hit?.allowed == false && hit?.retryAfter == 15 && hit?.tightest?.policy.name == "login")
        #expect(cache.check(reqs, now: 59_999) != nil)
        #expect(cache.check(reqs, now: 60_000) == nil)                    // when the store would allow
        #expect(table.check(policies: reqs.map { ($0.0, key: $0.1) }, now: 60_000).allowed)
        #expect(cache.check([(perIP, "ip")], now: 45_000) == nil)
    }

    @Test func bounded() {
        let cache = DeniedCache(capacity: 50)
        for i in 0..<1000 { cache.remember(key: "k\(i)", untilMs: 1_000_000, now: 0) }
        #expect(cache.count == 50)
        #expect(cache.check([(spec("p", 1, 1), "k999")], now: 1) != nil)  // newest kept
        #expect(cache.check([(spec("p", 1, 1), "k0")], now: 1) == nil)    // oldest evicted
    }
}
