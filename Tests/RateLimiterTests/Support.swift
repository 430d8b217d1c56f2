import Foundation
import Testing
@testable import RateLimiter

struct MissingRedisSocket: Error, CustomStringConvertible {
    var description: String { "CI=true but RATELIMIT_REDIS_SOCKET is not set: run through scripts/with-redis.sh" }
}

extension Trait where Self == ConditionTrait {
    /// Runs the suite when `RATELIMIT_REDIS_SOCKET` names a redis-server; skips it otherwise, except
    /// under `CI=true` (`.ci/run`), where skipped tests would let a broken CI image pass while
    /// testing less.
    static var needsRedisSocket: Self {
        .enabled("needs RATELIMIT_REDIS_SOCKET: run through scripts/with-redis.sh") {
            if ProcessInfo.processInfo.environment["RATELIMIT_REDIS_SOCKET"] != nil { return true }
            if ["true", "1"].contains(ProcessInfo.processInfo.environment["CI"]?.lowercased() ?? "") { throw MissingRedisSocket() }
            return false
        }
    }
}

/// Deterministic generator so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// One step of a reproducible random walk of traffic.
struct TrafficStep {
    var index: Int
    var now: Int64
    var client: Int
    /// A non-empty random subset of the policies, keyed by `client`.
    var requests: [(PolicySpec, String)]
}

/// Time advances by 0...`maxStepMs` per step; each step picks a random client and a random
/// non-empty subset of `policies`. Used to compare two implementations on the same input.
func randomTraffic(
    policies: [PolicySpec], clients: Int, steps: Int, maxStepMs: Int64, start: Int64, seed: UInt64
) -> [TrafficStep] {
    var rng = SplitMix64(seed: seed)
    var now = start
    var result: [TrafficStep] = []
    for index in 0..<steps {
        now += Int64.random(in: 0...maxStepMs, using: &rng)
        let client = Int.random(in: 0..<clients, using: &rng)
        let chosen = policies.filter { _ in Bool.random(using: &rng) }
        if chosen.isEmpty { continue }
        result.append(TrafficStep(
            index: index, now: now, client: client, requests: chosen.map { ($0, "gw:rl:{c\(client)}:\($0.name)") }
        ))
    }
    return result
}

/// Brute-force reference models: keep every admitted request time, count by scanning, and find
/// waits by stepping the clock one millisecond at a time. Slow, obviously right.
struct ReferenceModel {
    enum Kind { case weighted, log }
    let kind: Kind
    let limit: Int
    let windowMs: Int64
    var admitted: [Int64] = []

    /// Usage × W at `t` (weighted) or live entry count × W (log).
    func usageTimesW(at t: Int64) -> Int64 {
        switch kind {
        case .weighted:
            let start = t - t % windowMs, e = t - start
            let c = Int64(admitted.filter { $0 >= start && $0 <= t }.count)
            let p = Int64(admitted.filter { $0 >= start - windowMs && $0 < start }.count)
            return p * (windowMs - e) + c * windowMs
        case .log:
            return Int64(admitted.filter { $0 > t - windowMs && $0 <= t }.count) * windowMs
        }
    }

    func fits(_ k: Int, at t: Int64) -> Bool {
        usageTimesW(at: t) + Int64(k) * windowMs <= Int64(limit) * windowMs
    }

    func remaining(at t: Int64) -> Int {
        var k = 0
        while k < limit && fits(k + 1, at: t) { k += 1 }
        return k
    }

    /// First millisecond ≥ t at which `condition` holds, as an offset from t.
    func firstOffset(from t: Int64, _ condition: (Int64) -> Bool) -> Int64 {
        var dt: Int64 = 0
        while !condition(t + dt) {
            dt += 1
            precondition(dt <= 3 * windowMs, "reference scan ran away")
        }
        return dt
    }

    mutating func decide(now: Int64, cost: Int) -> Decision {
        let ok = cost <= limit && fits(cost, at: now)
        if ok { admitted += Array(repeating: now, count: cost) }
        admitted.removeAll { $0 < now - 2 * windowMs }
        let rem = remaining(at: now)
        let reset = rem >= limit ? 0 : firstOffset(from: now) { remaining(at: $0) >= rem + 1 }
        let retry: Int64? = ok ? nil : (cost > limit ? windowMs : firstOffset(from: now) { fits(cost, at: $0) })
        return Decision(allowed: ok, limit: limit, remaining: rem, resetAfterMs: reset, retryAfterMs: retry)
    }
}

func spec(_ name: String, _ limit: Int, _ window: Int, _ algo: RateLimitAlgorithm = .slidingWindow,
          shadow: Bool = false) -> PolicySpec {
    PolicySpec(name: name, limit: limit, windowSeconds: window, algorithm: algo, shadow: shadow)
}
