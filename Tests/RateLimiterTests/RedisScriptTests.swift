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

    /// One command of a batch: a script call, or a command answered with one line (PTTL, EXISTS).
    enum Command {
        case eval([(PolicySpec, String)], now: Int64?, cost: Int = 1, peek: Bool = false)
        case line([String])
    }

    /// Runs `args` through redis-cli; the reply's lines.
    func redis(_ args: [String]) async throws -> [String] {
        try await Self.redisCLI(["-s", self.socket] + args, input: nil)
    }

    /// Runs `commands` back to back through one redis-cli: the script's windows are a second
    /// long and its keys expire in real time, so a pause between two steps (this process kept
    /// off-CPU) would let Redis forget what the Swift model still counts. The replies, in order:
    /// a decision for each `.eval` (nil when its reply is not one), the line(s) of each.
    func run(_ commands: [Command]) async throws -> [(decision: MultiDecision?, line: String)] {
        let input = commands.map { command -> String in
            switch command {
            case .eval(let requests, let now, let cost, let peek):
                let (keys, argv) = RedisRateLimitScript.keysAndArguments(requests, cost: cost, nowOverrideMs: now, peek: peek)
                return (["EVAL", RedisRateLimitScript.source, String(keys.count)] + keys + argv).map(Self.quoted).joined(separator: " ")
            case .line(let args):
                return args.map(Self.quoted).joined(separator: " ")
            }
        }.joined(separator: "\n") + "\n"
        var lines = try await Self.redisCLI(["-s", self.socket], input: input)[...]
        return commands.map { command in
            switch command {
            case .eval(let requests, _, _, let peek):
                let count = 4 * requests.count
                let ints = lines.prefix(count).compactMap { Int64($0) }
                let text = lines.prefix(count).joined(separator: " ")
                lines = lines.dropFirst(count)
                guard ints.count == count else { return (nil, text) }
                let reply = stride(from: 0, to: count, by: 4).map { Array(ints[$0..<$0 + 4]) }
                return (RedisRateLimitScript.decision(reply: reply, requests: requests, peek: peek), text)
            case .line:
                defer { lines = lines.dropFirst() }
                return (nil, lines.first ?? "")
            }
        }
    }

    struct MissingReply: Error {}

    /// The next reply of a batch, in the order its commands were sent.
    static func next<T>(_ replies: inout ArraySlice<T>) throws -> T {
        guard let reply = replies.popFirst() else { throw MissingReply() }
        return reply
    }

    /// redis-cli's argument syntax on stdin: double quotes, backslash escapes.
    static func quoted(_ argument: String) -> String {
        var out = "\""
        for scalar in argument.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// Runs redis-cli on a Dispatch worker: waiting for a child process on Swift concurrency's
    /// pool (as wide as the machine's cores) starved every other suite's tasks for as long as it
    /// took, long enough for their own deadlines to pass. `input`, if any, comes from a file: a
    /// pipe written before the output is read could fill both ways.
    static func redisCLI(_ arguments: [String], input: String?) async throws -> [String] {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result {
                    let p = Process()
                    p.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
                    p.arguments = arguments
                    var inputFile: URL?
                    defer { if let inputFile { try? FileManager.default.removeItem(at: inputFile) } }
                    if let input {
                        let file = FileManager.default.temporaryDirectory.appendingPathComponent("redis-script-\(UUID().uuidString)")
                        try Data(input.utf8).write(to: file)
                        inputFile = file
                        p.standardInput = try FileHandle(forReadingFrom: file)
                    }
                    let out = Pipe()
                    p.standardOutput = out
                    try p.run()
                    let data = out.fileHandleForReading.readDataToEndOfFile()
                    p.waitUntilExit()
                    return String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
                        .dropLast().map(String.init)
                })
            }
        }
    }

    @Test func luaMatchesSwiftMaths() async throws {
        var table = RateLimitTable()
        let policies = [spec("per_ip", 6, 2), spec("login", 3, 1, .slidingLog),
                        spec("shadow", 2, 1, .slidingLog, shadow: true)]
        // Only this test's keys: the server is shared with other suites running in parallel
        // (FLUSHALL here used to wipe their keys mid-test).
        _ = try await redis(["DEL"] + (0..<2).flatMap { c in policies.map { "gw:rl:{c\(c)}:\($0.name)" } })
        let steps = randomTraffic(policies: policies, clients: 2, steps: 300, maxStepMs: 400, start: 1_700_000_000_000, seed: 11)
        let cost = { (step: TrafficStep) in step.index % 17 == 0 ? 2 : 1 }
        let replies = try await run(steps.map { .eval($0.requests, now: $0.now, cost: cost($0)) })
        for (step, reply) in zip(steps, replies) {
            let swift = table.check(policies: step.requests.map { ($0.0, key: $0.1) }, now: step.now, cost: cost(step))
            #expect(reply.decision == swift, "step \(step.index) at \(step.now): \(reply.line)")
        }
        // Every key carries a TTL (at least the last step's keys are still there to check). A key
        // listed and then gone before its PTTL (-2: it expired, or another suite on the shared
        // server deleted its own) proves nothing either way; -1 is a key without expiry.
        let keys = try await redis(["KEYS", "gw:rl:*"])
        #expect(!keys.isEmpty)
        for (key, ttl) in zip(keys, try await run(keys.map { .line(["PTTL", $0]) })) {
            let milliseconds = Int(ttl.line) ?? -99
            #expect(milliseconds > 0 || milliseconds == -2, "\(key) has no expiry: \(ttl.line)")
        }
    }

    /// Peek mode (the first round of a multi-slot check in Redis Cluster): the decision of the
    /// Swift `peek`, and nothing written — later counting calls still match a table the peeks
    /// never touched.
    @Test func luaPeekDecidesLikeSwiftAndCountsNothing() async throws {
        var table = RateLimitTable()
        let policies = [spec("pk_ip", 4, 2), spec("pk_login", 2, 1, .slidingLog),
                        spec("pk_shadow", 1, 1, .slidingLog, shadow: true)]
        _ = try await redis(["DEL"] + (0..<2).flatMap { c in policies.map { "gw:rl:{c\(c)}:\($0.name)" } })
        let steps = randomTraffic(policies: policies, clients: 2, steps: 300, maxStepMs: 300, start: 1_700_000_000_000, seed: 23)
        let cost = { (step: TrafficStep) in step.index % 13 == 0 ? 2 : 1 }
        // Every step peeks; two in three then count.
        let counts = { (step: TrafficStep) in step.index % 3 != 0 }
        var replies = try await run(steps.flatMap { step -> [Command] in
            let peek = Command.eval(step.requests, now: step.now, cost: cost(step), peek: true)
            return counts(step) ? [peek, .eval(step.requests, now: step.now, cost: cost(step))] : [peek]
        })[...]
        var peeks = (allowed: 0, denied: 0)
        for step in steps {
            let swiftPeek = table.peek(policies: step.requests.map { ($0.0, key: $0.1) }, now: step.now, cost: cost(step))
            let luaPeek = try Self.next(&replies)
            #expect(luaPeek.decision == swiftPeek, "peek at step \(step.index): \(luaPeek.line)")
            #expect(luaPeek.decision?.decisions.allSatisfy { !$0.counted } == true)
            if luaPeek.decision?.allowed == true { peeks.allowed += 1 } else { peeks.denied += 1 }
            guard counts(step) else { continue }
            let lua = try Self.next(&replies)
            let swift = table.check(policies: step.requests.map { ($0.0, key: $0.1) }, now: step.now, cost: cost(step))
            #expect(lua.decision == swift, "step \(step.index) at \(step.now): \(lua.line)")
        }
        // The traffic exercised both answers.
        #expect(peeks.allowed > 20 && peeks.denied > 20, "\(peeks)")
        // A peek on a fresh key allows every time and creates nothing.
        let p = spec("pk_fresh", 1, 60)
        let key = "gw:rl:{peek-\(UUID().uuidString)}:pk_fresh"
        let fresh = try await run(Array(repeating: .eval([(p, key)], now: nil, peek: true), count: 3) + [
            .line(["EXISTS", key]), .eval([(p, key)], now: nil), .eval([(p, key)], now: nil),
        ])
        #expect(fresh[0..<3].allSatisfy { $0.decision?.allowed == true }, "\(fresh)")
        #expect(fresh[3].line == "0")
        #expect(fresh[4].decision?.allowed == true && fresh[5].decision?.allowed == false, "\(fresh)")
    }

    /// One sliding-window policy, the common configuration, takes the script's own path (no
    /// per-policy tables; within a window only the count is written). It decides, counts and
    /// peeks like the Swift maths through window roll-overs, costs above one, a shadow policy and
    /// a clock that steps back (another instance's), and its key always expires within two
    /// windows.
    @Test func luaOnePolicyPathMatchesSwiftMaths() async throws {
        var table = RateLimitTable()
        let enforced = spec("one_ip", 5, 1), shadow = spec("one_shadow", 3, 1, shadow: true)
        let keys = ["gw:rl:{one}:one_ip", "gw:rl:{one}:one_shadow"]
        _ = try await redis(["DEL"] + keys)
        var rng = SplitMix64(seed: 5)
        var now: Int64 = 1_700_000_000_000
        var steps: [(index: Int, now: Int64, request: [(PolicySpec, String)], cost: Int)] = []
        for index in 0..<300 {
            now += Int64.random(in: 0...350, using: &rng)
            if index % 29 == 0 { now -= 400 }
            steps.append((index, now, index % 3 == 0 ? [(shadow, keys[1])] : [(enforced, keys[0])], index % 11 == 0 ? 2 : 1))
        }
        var replies = try await run(steps.flatMap { step -> [Command] in
            (step.index % 5 == 0 ? [.eval(step.request, now: step.now, cost: step.cost, peek: true)] : [])
                + [.eval(step.request, now: step.now, cost: step.cost)]
                + (step.index % 4 == 0 ? keys.map { .line(["PTTL", $0]) } : [])
        })[...]
        var seen = (allowed: 0, denied: 0, peeks: 0)
        for step in steps {
            let policies = step.request.map { ($0.0, key: $0.1) }
            if step.index % 5 == 0 {
                let lua = try Self.next(&replies)
                #expect(lua.decision == table.peek(policies: policies, now: step.now, cost: step.cost), "peek at step \(step.index): \(lua.line)")
                seen.peeks += 1
            }
            let lua = try Self.next(&replies)
            let swift = table.check(policies: policies, now: step.now, cost: step.cost)
            #expect(lua.decision == swift, "step \(step.index) at \(step.now): \(lua.line)")
            if lua.decision?.decisions[0].decision.allowed == true { seen.allowed += 1 } else { seen.denied += 1 }
            for key in keys where step.index % 4 == 0 {
                let ttl = Int64(try Self.next(&replies).line) ?? -99
                #expect(ttl == -2 || (1...2000).contains(ttl), "\(key) at step \(step.index): PTTL \(ttl)")
            }
        }
        #expect(seen.allowed > 30 && seen.denied > 30, "\(seen)")
    }

    @Test func luaUsesServerTime() async throws {
        let p = spec("time", 2, 60, .slidingLog)
        let key = "gw:rl:{time-\(UUID().uuidString)}:time"
        let replies = try await run(Array(repeating: .eval([(p, key)], now: nil), count: 3)).map(\.decision)
        let (a, b, c) = (try #require(replies[0]), try #require(replies[1]), try #require(replies[2]))
        #expect(a.allowed && b.allowed && !c.allowed)
        #expect(c.retryAfter.map { (59...60).contains($0) } == true)
    }
}
