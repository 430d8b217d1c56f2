import Foundation
import Testing
@testable import RateLimiter

/// Runs the Lua script in a real redis-server through `redis-cli` and compares it with the Swift
/// maths. Enabled when `RATELIMIT_REDIS_SOCKET` names a redis-server unix socket (disposable:
/// the test deletes and writes `gw:rl:{c0}:*`, `gw:rl:{c1}:*`, `gw:rl:{time-<uuid>}:*` and
/// `gw:rl:{peek-<uuid>}:*`). Serialized: `luaMatchesSwiftMaths` checks the TTL of every
/// `gw:rl:*` key, which a sibling's short-lived keys could drop between its KEYS and its PTTL.
@Suite(.needsRedisSocket, .serialized)
struct RedisScriptTests {
    let socket = ProcessInfo.processInfo.environment["RATELIMIT_REDIS_SOCKET"] ?? ""

    func redis(_ args: [String]) throws -> [String] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
        p.arguments = ["-s", socket] + args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    func eval(_ reqs: [(PolicySpec, String)], now: Int64?, cost: Int = 1, peek: Bool = false) throws -> MultiDecision {
        let (keys, argv) = RedisRateLimitScript.keysAndArguments(reqs, cost: cost, nowOverrideMs: now, peek: peek)
        let lines = try redis(["EVAL", RedisRateLimitScript.source, String(keys.count)] + keys + argv)
        let ints = lines.compactMap { Int64($0) }
        #expect(ints.count == 4 * reqs.count, "reply: \(lines)")
        let reply = stride(from: 0, to: ints.count, by: 4).map { Array(ints[$0..<$0 + 4]) }
        return try #require(RedisRateLimitScript.decision(reply: reply, requests: reqs, peek: peek))
    }

    @Test func luaMatchesSwiftMaths() throws {
        var table = RateLimitTable()
        let policies = [spec("per_ip", 6, 2), spec("login", 3, 1, .slidingLog),
                        spec("shadow", 2, 1, .slidingLog, shadow: true)]
        // Only this test's keys: the server is shared with other suites running in parallel
        // (FLUSHALL here used to wipe their keys mid-test).
        _ = try redis(["DEL"] + (0..<2).flatMap { c in policies.map { "gw:rl:{c\(c)}:\($0.name)" } })
        for step in randomTraffic(policies: policies, clients: 2, steps: 300, maxStepMs: 400, start: 1_700_000_000_000, seed: 11) {
            let cost = step.index % 17 == 0 ? 2 : 1
            let lua = try eval(step.requests, now: step.now, cost: cost)
            let swift = table.check(policies: step.requests.map { ($0.0, key: $0.1) }, now: step.now, cost: cost)
            #expect(lua == swift, "step \(step.index) at \(step.now)")
        }
        // Every key carries a TTL (at least the last step's keys are still there to check).
        let keys = try redis(["KEYS", "gw:rl:*"])
        #expect(!keys.isEmpty)
        for key in keys {
            let ttl = try redis(["PTTL", key]).first.flatMap { Int($0) } ?? -99
            #expect(ttl > 0, "\(key) has no expiry")
        }
    }

    /// Peek mode (the first round of a multi-slot check in Redis Cluster): the decision of the
    /// Swift `peek`, and nothing written — later counting calls still match a table the peeks
    /// never touched.
    @Test func luaPeekDecidesLikeSwiftAndCountsNothing() throws {
        var table = RateLimitTable()
        let policies = [spec("pk_ip", 4, 2), spec("pk_login", 2, 1, .slidingLog),
                        spec("pk_shadow", 1, 1, .slidingLog, shadow: true)]
        _ = try redis(["DEL"] + (0..<2).flatMap { c in policies.map { "gw:rl:{c\(c)}:\($0.name)" } })
        var peeks = (allowed: 0, denied: 0)
        for step in randomTraffic(policies: policies, clients: 2, steps: 300, maxStepMs: 300, start: 1_700_000_000_000, seed: 23) {
            let cost = step.index % 13 == 0 ? 2 : 1
            let swiftPeek = table.peek(policies: step.requests.map { ($0.0, key: $0.1) }, now: step.now, cost: cost)
            let luaPeek = try eval(step.requests, now: step.now, cost: cost, peek: true)
            #expect(luaPeek == swiftPeek, "peek at step \(step.index)")
            #expect(luaPeek.decisions.allSatisfy { !$0.counted })
            if luaPeek.allowed { peeks.allowed += 1 } else { peeks.denied += 1 }
            guard step.index % 3 != 0 else { continue } // some steps only peek
            let lua = try eval(step.requests, now: step.now, cost: cost)
            let swift = table.check(policies: step.requests.map { ($0.0, key: $0.1) }, now: step.now, cost: cost)
            #expect(lua == swift, "step \(step.index) at \(step.now)")
        }
        // The traffic exercised both answers.
        #expect(peeks.allowed > 20 && peeks.denied > 20, "\(peeks)")
        // A peek on a fresh key allows every time and creates nothing.
        let p = spec("pk_fresh", 1, 60)
        let key = "gw:rl:{peek-\(UUID().uuidString)}:pk_fresh"
        for _ in 0..<3 { #expect(try eval([(p, key)], now: nil, peek: true).allowed) }
        #expect(try redis(["EXISTS", key]) == ["0"])
        #expect(try eval([(p, key)], now: nil).allowed)
        #expect(try !eval([(p, key)], now: nil).allowed)
    }

    /// One sliding-window policy, the common configuration, takes the script's own path (no
    /// per-policy tables; within a window only the count is written). It decides, counts and
    /// peeks like the Swift maths through window roll-overs, costs above one, a shadow policy and
    /// a clock that steps back (another instance's), and its key always expires within two
    /// windows.
    @Test func luaOnePolicyPathMatchesSwiftMaths() throws {
        var table = RateLimitTable()
        let enforced = spec("one_ip", 5, 1), shadow = spec("one_shadow", 3, 1, shadow: true)
        let keys = ["gw:rl:{one}:one_ip", "gw:rl:{one}:one_shadow"]
        _ = try redis(["DEL"] + keys)
        var rng = SplitMix64(seed: 5)
        var now: Int64 = 1_700_000_000_000
        var seen = (allowed: 0, denied: 0, peeks: 0)
        for step in 0..<300 {
            now += Int64.random(in: 0...350, using: &rng)
            if step % 29 == 0 { now -= 400 }
            let request = step % 3 == 0 ? [(shadow, keys[1])] : [(enforced, keys[0])]
            let cost = step % 11 == 0 ? 2 : 1
            if step % 5 == 0 {
                let lua = try eval(request, now: now, cost: cost, peek: true)
                #expect(lua == table.peek(policies: request.map { ($0.0, key: $0.1) }, now: now, cost: cost), "peek at step \(step)")
                seen.peeks += 1
            }
            let lua = try eval(request, now: now, cost: cost)
            let swift = table.check(policies: request.map { ($0.0, key: $0.1) }, now: now, cost: cost)
            #expect(lua == swift, "step \(step) at \(now)")
            if lua.decisions[0].decision.allowed { seen.allowed += 1 } else { seen.denied += 1 }
            for key in keys where step % 4 == 0 {
                let ttl = try redis(["PTTL", key]).first.flatMap { Int64($0) } ?? -99
                #expect(ttl == -2 || (1...2000).contains(ttl), "\(key) at step \(step): PTTL \(ttl)")
            }
        }
        #expect(seen.allowed > 30 && seen.denied > 30, "\(seen)")
    }

    @Test func luaUsesServerTime() throws {
        let p = spec("time", 2, 60, .slidingLog)
        let key = "gw:rl:{time-\(UUID().uuidString)}:time"
        let a = try eval([(p, key)], now: nil), b = try eval([(p, key)], now: nil), c = try eval([(p, key)], now: nil)
        #expect(a.allowed && b.allowed && !c.allowed)
        #expect(c.retryAfter.map { (59...60).contains($0) } == true)
    }
}
