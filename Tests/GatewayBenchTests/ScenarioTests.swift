import Foundation
import Testing
@testable import GatewayBench

@Suite struct ScenarioTests {
    let second: UInt64 = 1_000_000_000

    func problems(_ yaml: String, baseDirectory: String = ".") -> [String] {
        do {
            _ = try BenchScenario.parse(yaml, file: "s.yaml", baseDirectory: baseDirectory)
            return []
        } catch {
            return error.problems
        }
    }

    @Test func aFullScenarioParses() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("scenario-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try Data(#"{"email":"a@b.c"}"#.utf8).write(to: directory.appendingPathComponent("login.json"))
        let yaml = """
            url: https://127.0.0.1:8443
            http2: true
            connections: 8
            streams: 4
            warmup: 2s
            timeout: 3s
            ramp:
              - { rate: 1000, for: 30s }
              - { rate: 5000, for: 1m }
            expect_status: [2xx]
            thresholds: ["p99<5ms", "errors<0.1%", "rate>=0.99"]
            jwt_secret_env: BENCH_SECRET
            headers: { x-bench: ci }
            targets:
              - name: list
                weight: 80
                path: /api/bookings
                token: { sub: per_connection, role: client }
              - name: create
                weight: 15
                method: post
                path: /api/bookings
                headers: { content-type: application/json }
                body: '{"barber":"Martin"}'
                expect: [201]
              - name: login
                weight: 5
                method: POST
                path: /api/auth/login
                body_file: login.json
                token: none
                expect: "200,429"
                thresholds: ["status:429>=50%"]
            """
        let scenario = try BenchScenario.parse(yaml, baseDirectory: directory.path)
        #expect(scenario.url == "https://127.0.0.1:8443")
        #expect(scenario.http2 == true && scenario.connections == 8 && scenario.streams == 4)
        #expect(scenario.warmupNanos == 2 * self.second && scenario.timeoutNanos == 3 * self.second)
        #expect(scenario.ramp == [BenchStage(rate: 1000, durationNanos: 30 * self.second), BenchStage(rate: 5000, durationNanos: 60 * self.second)])
        #expect(scenario.expectStatus == .success)
        #expect(scenario.thresholds.map(\.text) == ["p99<5ms", "errors<0.1%", "rate>=0.99"])
        #expect(scenario.jwtSecretEnv == "BENCH_SECRET")
        #expect(scenario.headers == [BenchHeader("x-bench", "ci")])
        #expect(scenario.targets.map(\.request.name) == ["list", "create", "login"])
        #expect(scenario.targets.map(\.request.weight) == [80, 15, 5])
        let list = scenario.targets[0]
        #expect(list.request.method == "GET" && list.expect == nil)
        #expect(list.request.token == .minted(BenchTokenClaims(subject: .perConnection, role: "client")))
        let create = scenario.targets[1]
        #expect(create.request.method == "POST")
        #expect(create.request.body == Array(#"{"barber":"Martin"}"#.utf8))
        #expect(create.request.headers == [BenchHeader("content-type", "application/json")])
        #expect(create.expect == BenchStatusSet(codes: [201]))
        let login = scenario.targets[2]
        #expect(login.request.body == Array(#"{"email":"a@b.c"}"#.utf8))
        #expect(login.request.token == BenchTokenShape.none)
        #expect(login.expect == BenchStatusSet(codes: [200, 429]))
        #expect(login.thresholds.map(\.text) == ["status:429>=50%"])
    }

    @Test func aMinimalScenarioHasDefaults() throws {
        let scenario = try BenchScenario.parse("rate: 50\nduration: 2s\n")
        #expect(scenario.rate == 50 && scenario.durationNanos == 2 * self.second)
        #expect(scenario.targets.isEmpty && scenario.ramp.isEmpty && scenario.url == nil)
        let named = try BenchScenario.parse("targets: [{path: /a}, {method: POST, path: /a}]")
        #expect(named.targets.map(\.request.name) == ["GET /a", "POST /a"])
        #expect(named.targets.map(\.request.weight) == [1, 1])
    }

    /// The same rules as `--url` and `--header`: the request goes on the wire as given.
    @Test func pathsAndFieldValuesThatWouldSplitTheRequestAreRefused() {
        let found = self.problems("""
            url: http://127.0.0.1:8080
            targets:
              - { name: tab, path: "/a\\tb" }
              - { name: del, path: "/a\\u007Fb" }
              - { path: /c, headers: { x-a: "1\\u0000" } }
              - { path: /d, headers: { x-b: "1\\r\\nx-c: 2" } }
              - { path: "/e%20f?g=h", headers: { x-d: "tab\\tok" } }
            """)
        #expect(found == [
            "targets[0].path: expected an origin-form path starting with / (the host comes from url)",
            "targets[1].path: expected an origin-form path starting with / (the host comes from url)",
            "targets[2].headers.x-a: a field value cannot contain CR, LF or NUL",
            "targets[3].headers.x-b: a field value cannot contain CR, LF or NUL",
        ], "\(found)")
    }

    @Test func everyProblemIsReportedWithItsPath() {
        let found = self.problems("""
            url: ftp://x
            rat: 5
            connections: many
            ramp:
              - { rate: 0, for: 1s }
              - { rate: 10 }
              - { rate: 10, for: 1s, extra: 1 }
            thresholds: ["p99<5", "latency<1ms"]
            jwt_secret_env: "my secret"
            targets:
              - { weight: 0, path: api }
              - { path: /b, expect: [700], token: { sub: per_connection, ttl: 0s, expird: true } }
              - { path: /c, body: x, body_file: y }
              - { name: dup, path: /d }
              - { name: dup, path: /e, headers: { "bad name": 1 } }
              - { method: "GE T", path: /f, token: sometimes }
            """)
        let expected = [
            "url: must start with http:// or https://",
            "rat: unknown key (did you mean 'rate'?)",
            "connections: must be a positive integer, got \"many\"",
            "ramp[0].rate: expected requests per second, e.g. 2000, got \"0\"",
            "ramp[1].for: missing required key",
            "ramp[2].extra: unknown key (expected one of: rate, for)",
            "thresholds[0]: threshold \"p99<5\": a latency needs a unit: 500us, 5ms, 1.5s",
            "targets[0].weight: must be a positive integer, got \"0\"",
            "targets[0].path: expected an origin-form path starting with / (the host comes from url)",
            "targets[1].expect[0]: expected a status code (100-599) or a class like 2xx, got \"700\"",
            "targets[1].token.expird: unknown key (did you mean 'expired'?)",
            "targets[1].token.ttl: expected a duration like 500ms, 30s or 2m, got \"0s\"",
            "targets[2].body_file: give either body or body_file, not both",
            "targets[4].name: \"dup\" names another target too; give each a distinct name",
            "targets[4].headers.bad name: \"bad name\" is not a valid field name",
            "targets[5].method: \"GE T\" is not an HTTP method",
            "targets[5].token: expected none, default, shared, per_connection or a mapping {sub, role, kid, ttl, expired}",
        ]
        for problem in expected { #expect(found.contains(problem), "missing: \(problem)\nfound: \(found)") }
        #expect(found.contains { $0.hasPrefix("thresholds[1]: threshold \"latency<1ms\": unknown metric") })
        #expect(found.contains { $0.hasPrefix("jwt_secret_env: expected the name of an environment variable") })
        #expect(found.contains { $0.hasPrefix("targets[2].body_file: cannot read") })
    }

    @Test func rampExcludesRateAndDuration() {
        let found = self.problems("rate: 10\nduration: 5s\nramp: [{rate: 5, for: 1s}]\n")
        #expect(found == [
            "rate: give either rate (with duration) or ramp, not both",
            "duration: a ramp's stages set the duration; leave duration out",
        ])
    }

    @Test func brokenFilesSayWhatIsWrong() throws {
        #expect(self.problems("targets: [{path: /a}") .count == 1)
        #expect(self.problems("targets: [{path: /a}").first?.hasPrefix("YAML syntax:") == true)
        #expect(self.problems("") == ["the file is empty"])
        #expect(self.problems("- a\n- b\n") == ["(top level): expected a mapping, got a list"])
        #expect(self.problems("targets: {path: /a}") == ["targets: expected a list, got a mapping"])
        #expect(self.problems("targets: []") == ["targets: expected at least one target (or leave targets out to GET the url)"])
        #expect(self.problems("http2: maybe") == ["http2: expected true or false, got \"maybe\""])
        #expect(self.problems("warmup: soon") == ["warmup: expected a duration like 500ms, 30s or 2m, got \"soon\""])
        let error = try #require(throws: BenchScenarioError.self) { try BenchScenario.load(path: "/nonexistent/s.yaml") }
        #expect(error.description == "/nonexistent/s.yaml: cannot read the file")
        let twoProblems = try #require(throws: BenchScenarioError.self) { try BenchScenario.parse("rate: x\nwarmup: y\n", file: "b.yaml") }
        #expect(twoProblems.description.split(separator: "\n").allSatisfy { $0.hasPrefix("b.yaml: ") })
    }

    @Test func statusSetsAndHeaders() throws {
        let set = try BenchStatusSet(parsing: "2xx, 404,429")
        #expect(set.contains(200) && set.contains(299) && set.contains(404) && set.contains(429))
        #expect(!set.contains(300) && !set.contains(503))
        #expect(set.description == "2xx,404,429")
        #expect(throws: BenchError.self) { try BenchStatusSet(parsing: "200,") }
        #expect(throws: BenchError.self) { try BenchStatusSet(parsing: "9xx") }
        #expect(try BenchHeader(parsing: "X-A:  b c ") == BenchHeader("X-A", "b c"))
        #expect(throws: BenchError.self) { try BenchHeader(parsing: ": v") }
        #expect(throws: BenchError.self) { try BenchHeader(parsing: "a b: v") }
    }
}

@Suite struct MixAndStageTests {
    @Test func weightedPickerGivesTheExactMixSpreadOut() {
        var picker = WeightedPicker(weights: [80, 15, 5])
        var counts = [0, 0, 0]
        var picks: [Int] = []
        for _ in 0..<1000 {
            let pick = picker.next()
            counts[pick] += 1
            picks.append(pick)
        }
        #expect(counts == [800, 150, 50])
        // Spread out: the rare target never comes twice in a row, the common one never runs long.
        #expect(!zip(picks, picks.dropFirst()).contains { $0 == 2 && $1 == 2 })
        var longest = 0
        var run = 0
        for pick in picks {
            run = pick == 0 ? run + 1 : 0
            longest = max(longest, run)
        }
        #expect(longest <= 10)
        var single = WeightedPicker(weights: [3])
        #expect((0..<5).map { _ in single.next() } == [0, 0, 0, 0, 0])
    }

    @Test func stagesFollowEachOtherAndSplitOverLoops() {
        let second: UInt64 = 1_000_000_000
        let stages = [BenchStage(rate: 100, durationNanos: 2 * second), BenchStage(rate: 400, durationNanos: second)]
        let loops = StagedSchedule.perLoop(startNanos: second, stages: stages, connectionsPerLoop: [1, 1])
        #expect(loops.map(\.total).reduce(0, +) == 600)
        #expect(loops.map { $0.segments.map(\.count) } == [[100, 200], [100, 200]])
        let first = loops[0]
        #expect(first.sendTime(0) == second)
        #expect(first.sendTime(99) == second + 99 * 20_000_000)  // 50/s on this loop
        #expect(first.sendTime(100) == 3 * second)  // the second stage starts at its own start
        #expect(first.sendTime(101) == 3 * second + 5_000_000)  // 200/s on this loop
        #expect(first.stage(of: 99) == 0 && first.stage(of: 100) == 1 && first.stage(of: 299) == 1)
        // Every request of a stage is due inside that stage.
        for loop in loops {
            for index in 0..<loop.total {
                let time = loop.sendTime(index)
                #expect(loop.stage(of: index) == (time < 3 * second ? 0 : 1))
                #expect(time >= second && time < 4 * second)
            }
        }
        var queue = OpenLoopQueue(schedule: first)
        queue.advance(to: 3 * second)
        #expect(queue.waiting == 101)
        var stagesTaken: [Int] = []
        while let (_, stage) = queue.takeNextWithStage() { stagesTaken.append(stage) }
        #expect(stagesTaken == Array(repeating: 0, count: 100) + [1])
    }

    @Test func warmupIsAStageInFrontAtTheFirstRate() {
        let settings = BenchSettings(
            target: BenchTarget(tls: false, host: "127.0.0.1", port: 80, path: "/"), mode: .fixedRate(50), durationNanos: 4_000_000_000,
            connections: 1, streams: 1, http2: false, threads: 1, insecure: false, authorization: .none, timeoutNanos: 1_000_000_000,
            stages: [BenchStage(rate: 50, durationNanos: 1_000_000_000), BenchStage(rate: 70, durationNanos: 2_000_000_000)],
            warmupNanos: 500_000_000
        )
        #expect(settings.durationNanos == 3_000_000_000)  // the stages, not the duration given
        #expect(settings.scheduledStages.map(\.rate) == [50, 50, 70])
        #expect(settings.scheduledStages.first?.durationNanos == 500_000_000)
        #expect(settings.requests == [BenchRequest(name: "default", path: "/")])
    }

    @Test func unexpectedStatusesAreTheErrors() {
        var stats = BenchStats()
        stats.recordResponse(status: 200, latencyMicros: 10, expected: true)
        stats.recordResponse(status: 429, latencyMicros: 10, expected: true)
        stats.recordResponse(status: 503, latencyMicros: 10, expected: false)
        stats.recordResponse(status: 404, latencyMicros: 10)  // no expectation given: 2xx only
        #expect(stats.errors == 2 && stats.statusErrors == 2)
        #expect(stats.unexpectedCounts == [503: 1, 404: 1])
        #expect(BenchReport.errors(stats).by_status == ["503": 1, "404": 1])
    }

    @Test func mintedTokenShapes() throws {
        let secret = "bench-secret-at-least-32-bytes-long!"
        func claims(_ token: String) throws -> [String: Any] {
            let part = String(token.split(separator: ".")[1])
            var base64 = part.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
            while base64.count % 4 != 0 { base64 += "=" }
            let data = try #require(Data(base64Encoded: base64))
            return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        }
        let fixed = try claims(BenchToken.mint(secret: secret, claims: BenchTokenClaims(subject: .fixed("u-1"), role: "barber", lifetimeSeconds: 60), connection: 3, now: 1000))
        #expect(fixed["sub"] as? String == "u-1" && fixed["role"] as? String == "barber")
        #expect(fixed["iat"] as? Int == 1000 && fixed["exp"] as? Int == 1060)
        let expired = try claims(BenchToken.mint(secret: secret, claims: BenchTokenClaims(expired: true), connection: 3, now: 10_000))
        #expect((expired["exp"] as? Int ?? .max) < 10_000 - 3000)
        let perConnection = try claims(BenchToken.mint(secret: secret, claims: BenchTokenClaims(subject: .perConnection), connection: 3, now: 0))
        #expect(perConnection["sub"] as? String == "bench-user-3")
    }
}
