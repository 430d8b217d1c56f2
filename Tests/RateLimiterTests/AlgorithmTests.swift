import Testing
@testable import RateLimiter

@Suite struct AlgorithmTests {
    @Test(arguments: [RateLimitAlgorithm.slidingWindow, .slidingLog])
    func matchesBruteForceReference(_ algo: RateLimitAlgorithm) {
        var rng = SplitMix64(seed: algo == .slidingWindow ? 1 : 2)
        let limit = 5, windowMs: Int64 = 1000
        var ref = ReferenceModel(kind: algo == .slidingWindow ? .weighted : .log, limit: limit, windowMs: windowMs)
        var lim = PolicyLimiter(policy: PolicySpec(name: "x", limit: limit, windowSeconds: 1, algorithm: algo))
        var now: Int64 = 1_700_000_000_000
        var denied = 0
        for _ in 0..<600 {
            now += Int64.random(in: 0...(Bool.random(using: &rng) ? 40 : 450), using: &rng)
            let cost = Int.random(in: 0..<10, using: &rng) == 0 ? Int.random(in: 2...6, using: &rng) : 1
            let expected = ref.decide(now: now, cost: cost)
            let got = lim.decide(now: now, cost: cost)
            #expect(got == expected, "at \(now) cost \(cost)")
            if !got.allowed { denied += 1 }
        }
        #expect(denied > 50)  // the run really exercised denials
    }

    @Test func requestsAgeOut() {
        var log = SlidingLogLimiter(limit: 5, windowMs: 60_000)
        let t0: Int64 = 1_000_000
        for i in 0..<5 { #expect(log.decide(now: t0 + Int64(i) * 1000).allowed) }
        let sixth = log.decide(now: t0 + 10_000)
        #expect(!sixth.allowed && sixth.remaining == 0)
        #expect(sixth.retryAfterMs == 50_000)  // the first entry ages out at t0 + 60 s
        #expect(!log.decide(now: t0 + 59_999).allowed)
        #expect(log.decide(now: t0 + 60_000).allowed)

        var win = SlidingWindowLimiter(limit: 100, windowMs: 900_000)
        let s: Int64 = 900_000 * 1000
        for _ in 0..<100 { #expect(win.decide(now: s).allowed) }
        #expect(!win.decide(now: s + 450_000).allowed)
        // Next window, halfway: previous weight 1/2 → 50 used, 50 free.
        #expect(win.peek(now: s + 900_000 + 450_000).remaining == 50)
        // Two windows later everything has aged out.
        #expect(win.peek(now: s + 1_800_000).remaining == 100)
    }

    /// A fixed window lets 2 × limit through around a boundary; the weighted window must not.
    @Test func boundaryBurstIsBounded() {
        let limit = 100, windowMs: Int64 = 900_000
        let boundary: Int64 = 1_800_000 * 1000
        var fixedCounts: [Int64: Int] = [:]
        var win = SlidingWindowLimiter(limit: limit, windowMs: windowMs)
        var fixedAllowed = 0, slidingAllowed = 0
        var t = boundary - 1000
        while t <= boundary + 1000 {  // one attempt every 5 ms for 2 s around the boundary
            if fixedCounts[t / windowMs, default: 0] < limit {
                fixedCounts[t / windowMs, default: 0] += 1
                fixedAllowed += 1
            }
            if win.decide(now: t).allowed { slidingAllowed += 1 }
            t += 5
        }
        #expect(fixedAllowed == 2 * limit)
        // Documented bound for an interval of d = 2 s: limit + ⌊limit·d/W⌋ = 100.
        #expect(slidingAllowed <= limit + Int(Int64(limit) * 2000 / windowMs))
        #expect(slidingAllowed == limit)
    }

    /// Greedy client over three windows after a burst at the end of the first: every interval of
    /// length d admits at most limit + ⌊limit·d/W⌋, and a whole window never reaches 2 × limit.
    @Test func documentedErrorBoundHolds() {
        let limit = 100, windowMs: Int64 = 900_000
        var win = SlidingWindowLimiter(limit: limit, windowMs: windowMs)
        let start: Int64 = 900_000 * 2000
        var admitted: [Int64] = []
        for t in stride(from: start + windowMs - 2000, to: start + windowMs, by: 10) where win.decide(now: t).allowed {
            admitted.append(t)
        }
        for t in stride(from: start + windowMs, to: start + 4 * windowMs, by: 1000) where win.decide(now: t).allowed {
            admitted.append(t)
        }
        func maxIn(span d: Int64) -> Int {
            var best = 0, lo = 0
            for hi in admitted.indices {
                while admitted[hi] - admitted[lo] > d { lo += 1 }
                best = max(best, hi - lo + 1)
            }
            return best
        }
        for d: Int64 in [1000, 10_000, 60_000, 300_000, 899_999] {
            #expect(maxIn(span: d) <= limit + Int(Int64(limit) * d / windowMs), "span \(d)")
        }
        let worst = maxIn(span: windowMs - 1)
        #expect(worst > limit && worst < 2 * limit)  // the documented over-admission is real
    }

    @Test func slidingLogIsExact() {
        var rng = SplitMix64(seed: 9)
        var log = SlidingLogLimiter(limit: 5, windowMs: 60_000)
        var admitted: [Int64] = []
        var t: Int64 = 10_000_000
        for _ in 0..<2000 {
            t += Int64.random(in: 0...3000, using: &rng)
            if log.decide(now: t).allowed { admitted.append(t) }
            #expect(log.timestamps.count <= 5)  // memory bounded by the limit
        }
        // Never more than 5 in any 60 s, and every admission is the 5th-newest + 60 s or later.
        for i in 5..<admitted.count { #expect(admitted[i] - admitted[i - 5] >= 60_000) }
        #expect(admitted.count > 100)
    }

    @Test(arguments: [RateLimitAlgorithm.slidingWindow, .slidingLog])
    func deniedRequestsConsumeNothing(_ algo: RateLimitAlgorithm) {
        var lim = PolicyLimiter(policy: PolicySpec(name: "x", limit: 3, windowSeconds: 10, algorithm: algo))
        for _ in 0..<3 { #expect(lim.decide(now: 1000).allowed) }
        let before = lim
        for i in 0..<50 { #expect(!lim.decide(now: 1000 + Int64(i) * 100).allowed) }
        #expect(lim == before)
        var untouched = before
        #expect(lim.decide(now: 12_000) == untouched.decide(now: 12_000))
    }

    @Test(arguments: [RateLimitAlgorithm.slidingWindow, .slidingLog])
    func retryAfterIsNeverEarly(_ algo: RateLimitAlgorithm) {
        var rng = SplitMix64(seed: 42)
        var lim = PolicyLimiter(policy: PolicySpec(name: "x", limit: 10, windowSeconds: 60, algorithm: algo))
        var now: Int64 = 5_000_000_000
        var checked = 0
        for _ in 0..<3000 {
            now += Int64.random(in: 0...4000, using: &rng)
            let cost = Int.random(in: 0..<5, using: &rng) == 0 ? 3 : 1
            let d = lim.decide(now: now, cost: cost)
            guard !d.allowed, let ms = d.retryAfterMs, let secs = d.retryAfter else { continue }
            checked += 1
            #expect(secs >= 1)
            #expect(lim.peek(now: now + ms, cost: cost).allowed)
            #expect(!lim.peek(now: now + ms - 1, cost: cost).allowed)
            #expect(lim.peek(now: now + Int64(secs) * 1000, cost: cost).allowed)
            #expect(!lim.peek(now: now + Int64(secs - 1) * 1000, cost: cost).allowed)
            #expect(d.resetAfter <= secs)  // Retry-After is never before RateLimit-Reset
        }
        #expect(checked > 100)
    }

    @Test func costAboveLimitNeverPasses() {
        var w = SlidingWindowLimiter(limit: 3, windowMs: 1000)
        let d = w.decide(now: 0, cost: 4)
        #expect(!d.allowed && d.remaining == 3 && d.retryAfterMs == 1000)
        #expect(w.state == SlidingWindowState())
    }
}
