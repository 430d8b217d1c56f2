import ArgumentParser
import Foundation
import GatewayBench

/// `gateway bench`: the built-in load generator (SPEC "Benchmarks"); the work is in GatewayBench.
/// A run is the default subcommand, so `gateway bench --url …` runs one; `gateway bench compare`
/// compares two reports (its own `--plot` does not collide with a run's).
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load-test a URL or a scenario, judge it by thresholds, and compare runs.",
        subcommands: [BenchRun.self, BenchCompareCommand.self],
        defaultSubcommand: BenchRun.self
    )

    /// EX_USAGE, what swift-argument-parser itself exits with on a bad command line.
    static let usageExitCode: Int32 = 64
}

struct BenchRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Load-test a URL at a fixed rate (open loop) or at max throughput and report latency percentiles.",
        discussion: """
        Fixed rate (--rate R): request i is due at start + i/R and its latency is measured from that \
        scheduled time, so a stalled server shows as queueing latency, not as fewer samples. \
        Max (--max): N connections x M streams, each sending its next request when the previous ends. \
        A scenario file (--scenario) gives weighted targets, a ramp of stages and thresholds. \
        With SSLKEYLOGFILE set, each TLS connection's secrets are appended to that file (NSS key-log \
        format, created readable by its owner only), so a capture of the run can be decrypted. \
        Exit status: 0 when every threshold holds, 1 when one fails or the run cannot be done, \
        64 on a usage error (a bad option, threshold or scenario file).
        """
    )

    @Option(help: "http:// or https:// URL to request (with --scenario: its scheme, host and port).") var url: String?
    @Option(help: "Scenario YAML: weighted targets, ramp stages, thresholds (see benchmarks/README.md).") var scenario: String?
    @Option(help: "Fixed total rate in requests per second (e.g. 2000 or 2000/s).") var rate: String?
    @Flag(help: "Closed loop: as many requests as the connections and streams allow.") var max = false
    @Option(help: "How long to send and record (500ms, 30s, 2m; default 30s).") var duration: String?
    @Option(help: "Send this long first, at the first stage's rate, without recording (e.g. 5s).") var warmup: String?
    @Option(help: "Connections (default 16).") var connections: Int?
    @Option(help: "Concurrent streams per connection (HTTP/2; always 1 for HTTP/1.1; default 10).") var streams: Int?
    @Flag(help: "HTTP/2 (ALPN h2 over https, prior knowledge over http).") var http2 = false
    @Option(help: "Event loops (default: one per core).") var threads: Int?
    @Option(help: "Request method (default GET).") var method: String?
    @Option(name: .customLong("header"), help: "Extra request header 'name: value' (repeatable; with --scenario: on every target).") var headers: [String] = []
    @Option(help: "Request body.") var body: String?
    @Option(name: .customLong("body-file"), help: "Request body from FILE.") var bodyFile: String?
    @Option(help: "Send Authorization: Bearer T.") var token: String?
    @Option(name: .customLong("jwt-secret"), help: "Mint HS256 tokens with this secret (iss barberpro-auth, aud barberpro-api, exp 1h).")
    var jwtSecret: String?
    @Flag(name: .customLong("per-connection-subject"), help: "With --jwt-secret: a different sub on each connection.")
    var perConnectionSubject = false
    @Flag(help: "Do not verify the server certificate.") var insecure = false
    @Option(help: "A request without a response after this long is a timeout error (default 10s).") var timeout: String?
    @Option(name: .customLong("expect-status"), help: "Statuses that are not errors, e.g. 200,429 or 2xx,404 (default 2xx).")
    var expectStatus: String?
    @Option(name: .customLong("threshold"), help: "Pass/fail condition, e.g. 'p99<5ms', 'errors<0.1%', 'rate>=0.99' (repeatable).")
    var thresholds: [String] = []
    @Option(help: "Write the full report as JSON to FILE.") var json: String?
    @Option(help: "Write a latency-by-percentile chart to FILE.svg.") var plot: String?
    @Option(help: "Write the latency distribution in HdrHistogram's .hgrm format (ms) to FILE.") var hgrm: String?
    @Flag(help: "A progress line every second on stderr even when it is not a terminal.") var progress = false
    @Flag(help: "No progress line on stderr.") var quiet = false

    func run() async throws {
        let plan: Plan
        do {
            plan = try self.makePlan()
        } catch {
            FileHandle.standardError.write(Data("gateway bench: \(error)\n".utf8))
            throw ExitCode(Bench.usageExitCode)
        }
        let live = !self.quiet && !self.progress && isatty(STDERR_FILENO) == 1
        var report: BenchReport
        do {
            report = try await BenchRunner.run(plan.settings, url: plan.url) { line in
                // On a terminal the line is rewritten in place; elsewhere (CI logs) one line a second.
                FileHandle.standardError.write(Data((live ? "\r\u{1B}[K" + line : line + "\n").utf8))
            }
        } catch {
            if live { FileHandle.standardError.write(Data("\n".utf8)) }
            FileHandle.standardError.write(Data("gateway bench: \(error)\n".utf8))
            throw ExitCode(1)
        }
        if live { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        let verdict = BenchVerdict.evaluate(report, thresholds: plan.thresholds, targetThresholds: plan.targetThresholds)
        report.checks = verdict.checks
        report.passed = verdict.passed
        print(report.text)
        do {
            if let json { try report.jsonData().write(to: URL(fileURLWithPath: json)) }
            if let plot { try Data(report.svg.utf8).write(to: URL(fileURLWithPath: plot)) }
            if let hgrm { try Data(report.hgrm.utf8).write(to: URL(fileURLWithPath: hgrm)) }
        } catch {
            FileHandle.standardError.write(Data("gateway bench: \(error)\n".utf8))
            throw ExitCode(1)
        }
        print(verdict.line(for: report))
        if !verdict.passed { throw ExitCode(1) }
    }

    /// The run's settings and what to judge it by.
    struct Plan {
        var settings: BenchSettings
        var url: String
        var thresholds: [BenchThreshold]
        var targetThresholds: [String: [BenchThreshold]]
    }

    /// Command line over scenario file over defaults; every inconsistency is a usage error.
    private func makePlan() throws -> Plan {
        let scenario = try self.scenario.map { path throws -> BenchScenario in
            do { return try BenchScenario.load(path: path) } catch let error as BenchScenarioError {
                // One `gateway bench: FILE: path: reason` line per problem.
                throw BenchError.usage(error.description.replacingOccurrences(of: "\n", with: "\ngateway bench: "))
            }
        }
        guard let url = self.url ?? scenario?.url else {
            throw BenchError.usage("give --url (or url: in the scenario file)")
        }
        let target = try BenchTarget(parsing: url)

        let ramp = scenario?.ramp ?? []
        let mode: BenchSettings.Mode
        var stages: [BenchStage]? = nil
        switch (self.rate, self.max) {
        case (let rate?, false):
            guard let value = parseBenchRate(rate) else { throw BenchError.usage("--rate: expected requests per second, e.g. 2000") }
            mode = .fixedRate(value)
        case (nil, true): mode = .maxThroughput
        case (_?, true): throw BenchError.usage("--rate and --max exclude each other")
        case (nil, false):
            if let first = ramp.first {
                mode = .fixedRate(first.rate)
                stages = ramp
            } else if let rate = scenario?.rate {
                mode = .fixedRate(rate)
            } else {
                throw BenchError.usage("give --rate R (fixed rate, open loop) or --max (closed loop), or a rate or ramp in the scenario")
            }
        }
        if stages != nil && self.duration != nil { throw BenchError.usage("--duration and the scenario's ramp exclude each other (the stages set it)") }
        var duration = scenario?.durationNanos ?? 30_000_000_000
        if let text = self.duration {
            guard let value = parseBenchDuration(text) else { throw BenchError.usage("--duration: expected e.g. 30s") }
            duration = value
        }
        var warmup = scenario?.warmupNanos ?? 0
        if let text = self.warmup {
            // 0 switches off a scenario's warm-up.
            guard let value = ["0", "0s"].contains(text) ? 0 : parseBenchDuration(text) else {
                throw BenchError.usage("--warmup: expected e.g. 5s (or 0 for none)")
            }
            warmup = value
        }
        var timeout = scenario?.timeoutNanos ?? 10_000_000_000
        if let text = self.timeout {
            guard let value = parseBenchDuration(text) else { throw BenchError.usage("--timeout: expected e.g. 10s") }
            timeout = value
        }
        let connections = self.connections ?? scenario?.connections ?? 16
        let streams = self.streams ?? scenario?.streams ?? 10
        let threads = self.threads ?? scenario?.threads ?? ProcessInfo.processInfo.activeProcessorCount
        guard connections >= 1 else { throw BenchError.usage("--connections: at least 1") }
        guard streams >= 1 else { throw BenchError.usage("--streams: at least 1") }
        guard threads >= 1 else { throw BenchError.usage("--threads: at least 1") }

        var secret = self.jwtSecret
        if secret == nil, let name = scenario?.jwtSecretEnv {
            guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
                throw BenchError.usage("jwt_secret_env: the environment variable \(name) is not set")
            }
            secret = value
        }
        let authorization: BenchSettings.Authorization
        switch (self.token, secret) {
        case (let token?, nil): authorization = .token(token)
        case (nil, let secret?): authorization = .jwtSecret(secret, perConnectionSubject: self.perConnectionSubject)
        case (nil, nil): authorization = .none
        case (_?, _?): throw BenchError.usage("--token and --jwt-secret exclude each other")
        }
        if self.perConnectionSubject && secret == nil {
            throw BenchError.usage("--per-connection-subject needs --jwt-secret")
        }

        let cliHeaders = try self.headers.map { text throws(BenchError) in try BenchHeader(parsing: text) }
        var expect = scenario?.expectStatus ?? .success
        if let text = self.expectStatus {
            do { expect = try BenchStatusSet(parsing: text) } catch { throw BenchError.usage("--expect-status: \(error)") }
        }
        var body: [UInt8]? = nil
        switch (self.body, self.bodyFile) {
        case (let text?, nil): body = Array(text.utf8)
        case (nil, let path?):
            guard let data = FileManager.default.contents(atPath: path) else { throw BenchError.usage("--body-file: cannot read \(path)") }
            body = Array(data)
        case (nil, nil): break
        case (_?, _?): throw BenchError.usage("--body and --body-file exclude each other")
        }
        if let method = self.method, method.isEmpty || !method.utf8.allSatisfy({ byte in
            (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || byte == UInt8(ascii: "-")
        }) {
            throw BenchError.usage("--method: \"\(method)\" is not an HTTP method")
        }

        var requests: [BenchRequest]
        var targetThresholds: [String: [BenchThreshold]] = [:]
        if let targets = scenario?.targets, !targets.isEmpty {
            if self.method != nil || body != nil {
                throw BenchError.usage("--method, --body and --body-file are for a single URL; the scenario's targets give their own")
            }
            requests = targets.map { target in
                var request = target.request
                request.headers = (scenario?.headers ?? []) + cliHeaders + request.headers
                request.expect = target.expect ?? expect
                return request
            }
            for target in targets where !target.thresholds.isEmpty { targetThresholds[target.request.name] = target.thresholds }
        } else {
            requests = [BenchRequest(
                name: "\((self.method ?? "GET").uppercased()) \(target.path)", method: (self.method ?? "GET").uppercased(), path: target.path,
                headers: (scenario?.headers ?? []) + cliHeaders, body: body ?? [], expect: expect
            )]
        }

        var thresholds = scenario?.thresholds ?? []
        for text in self.thresholds { thresholds.append(try BenchThreshold(parsing: text)) }

        let settings = BenchSettings(
            target: target, mode: mode, durationNanos: duration, connections: connections, streams: streams,
            http2: self.http2 || (scenario?.http2 ?? false), threads: threads, insecure: self.insecure || (scenario?.insecure ?? false),
            authorization: authorization, timeoutNanos: timeout,
            progress: !self.quiet && (self.progress || isatty(STDERR_FILENO) == 1),
            requests: requests, stages: stages, warmupNanos: warmup
        )
        try BenchRunner.check(settings)
        return Plan(settings: settings, url: url, thresholds: thresholds, targetThresholds: targetThresholds)
    }
}

/// `gateway bench compare a.json b.json [--plot out.svg]`.
struct BenchCompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Compare two `gateway bench --json` reports: a side-by-side table with ratios b/a, and both curves on one chart."
    )

    @Argument(help: "The baseline report (a).") var a: String
    @Argument(help: "The report compared with it (b).") var b: String
    @Option(help: "Write both latency-by-percentile curves to FILE.svg.") var plot: String?

    func run() throws {
        let comparison: BenchComparison
        do {
            comparison = BenchComparison(a: try BenchComparison.load(path: self.a), b: try BenchComparison.load(path: self.b), labels: (self.a, self.b))
        } catch {
            FileHandle.standardError.write(Data("gateway bench compare: \(error)\n".utf8))
            throw ExitCode(Bench.usageExitCode)
        }
        print(comparison.table)
        if let plot {
            do { try Data(comparison.svg.utf8).write(to: URL(fileURLWithPath: plot)) } catch {
                FileHandle.standardError.write(Data("gateway bench compare: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}
