import Foundation
import Testing
@testable import RateLimiter

/// Runs the Lua script in a real redis-server through `redis-cli` and compares it with the Swift
/// maths. Enabled when `RATELIMIT_REDIS_SOCKET` names a redis-server unix socket (disposable:
/// the test deletes and writes `gw:rl:{c0}:*`, `gw:rl:{c1}:*` and `gw:rl:{time-<uuid>}:*`).
@Suite(.needsRedisSocket)
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

    func eval(_ reqs: [(PolicySpec, String)], now: Int64?, cost: Int = 1) throws -> MultiDecision {
        let (keys, argv) = RedisRateLimitScript.keysAndArguments(reqs, cost: cost, nowOverrideMs: now)
        let lines = try redis(["EVAL", RedisRateLimitScript.source, String(keys.count)] + keys + argv)
        let ints = lines.compactMap { Int64($0) }
        #expect(ints.count == 4 * reqs.count, "reply: \(lines)")
        let reply = stride(from: 0, to: ints.count, by: 4).map { Array(ints[$0..<$0 + 4]) }
        return try #require(RedisRateLimitScript.decision(reply: reply, requests: reqs))
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

    @Test func luaUsesServerTime() throws {
        let p = spec("time", 2, 60, .slidingLog)
        let key = "gw:rl:{time-\(UUID().uuidString)}:time"
        let a = try eval([(p, key)], now: nil), b = try eval([(p, key)], now: nil), c = try eval([(p, key)], now: nil)
        #expect(a.allowed && b.allowed && !c.allowed)
        #expect(c.retryAfter.map { (59...60).contains($0) } == true)
    }
}
