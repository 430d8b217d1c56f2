import ArgumentParser
import Foundation
import GatewayBench

/// `gateway bench`: the built-in load generator (SPEC "Benchmarks"); the work is in GatewayBench.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load-test a URL at a fixed rate (open loop) or at max throughput and report latency percentiles.",
        discussion: """
        Fixed rate (--rate R): request i is due at start + i/R and its latency is measured from that \
        scheduled time, so a stalled server shows as queueing latency, not as fewer samples. \
        Max (--max): N connections x M streams, each sending its next request when the previous ends.
        """
    )

    @Option(help: "http:// or https:// URL to request (GET).") var url: String
    @Option(help: "Fixed total rate in requests per second (e.g. 2000 or 2000/s).") var rate: String?
    @Flag(help: "Closed loop: as many requests as the connections and streams allow.") var max = false
    @Option(help: "How long to send (500ms, 30s, 2m).") var duration = "30s"
    @Option(help: "Connections.") var connections = 16
    @Option(help: "Concurrent streams per connection (HTTP/2; always 1 for HTTP/1.1).") var streams = 10
    @Flag(help: "HTTP/2 (ALPN h2 over https, prior knowledge over http).") var http2 = false
    @Option(help: "Event loops (default: one per core).") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Send Authorization: Bearer T.") var token: String?
    @Option(name: .customLong("jwt-secret"), help: "Mint HS256 tokens with this secret (iss barberpro-auth, aud barberpro-api, exp 1h).")
    var jwtSecret: String?
    @Flag(name: .customLong("per-connection-subject"), help: "With --jwt-secret: a different sub on each connection.")
    var perConnectionSubject = false
    @Flag(help: "Do not verify the server certificate.") var insecure = false
    @Option(help: "A request without a response after this long is a timeout error.") var timeout = "10s"
    @Option(help: "Write the full report as JSON to FILE.") var json: String?
    @Option(help: "Write a latency-by-percentile chart to FILE.svg.") var plot: String?
    @Option(name: .customLong("header"), help: "Extra request header 'name: value' (repeatable).") var headers: [String] = []
    @Flag(help: "No progress line on stderr.") var quiet = false

    func run() async throws {
        let settings: BenchSettings
        do {
            settings = try self.makeSettings()
        } catch {
            FileHandle.standardError.write(Data("gateway bench: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let report: BenchReport
        do {
            report = try await BenchRunner.run(settings, url: self.url) { line in
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
        } catch {
            FileHandle.standardError.write(Data("gateway bench: \(error)\n".utf8))
            throw ExitCode(1)
        }
        print(report.text)
        do {
            if let json { try report.jsonData().write(to: URL(fileURLWithPath: json)) }
            if let plot { try Data(report.svg.utf8).write(to: URL(fileURLWithPath: plot)) }
        } catch {
            FileHandle.standardError.write(Data("gateway bench: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    private func makeSettings() throws -> BenchSettings {
        let target = try BenchTarget(parsing: self.url)
        let mode: BenchSettings.Mode
        switch (self.rate, self.max) {
        case (let rate?, false):
            guard let value = parseBenchRate(rate) else { throw BenchError.usage("--rate: expected requests per second, e.g. 2000") }
            mode = .fixedRate(value)
        case (nil, true): mode = .maxThroughput
        case (_?, true): throw BenchError.usage("--rate and --max exclude each other")
        case (nil, false): throw BenchError.usage("give --rate R (fixed rate, open loop) or --max (closed loop)")
        }
        guard let duration = parseBenchDuration(self.duration) else { throw BenchError.usage("--duration: expected e.g. 30s") }
        guard let timeout = parseBenchDuration(self.timeout) else { throw BenchError.usage("--timeout: expected e.g. 10s") }
        guard self.connections >= 1 else { throw BenchError.usage("--connections: at least 1") }
        guard self.streams >= 1 else { throw BenchError.usage("--streams: at least 1") }
        guard self.threads >= 1 else { throw BenchError.usage("--threads: at least 1") }
        let authorization: BenchSettings.Authorization
        switch (self.token, self.jwtSecret) {
        case (let token?, nil): authorization = .token(token)
        case (nil, let secret?): authorization = .jwtSecret(secret, perConnectionSubject: self.perConnectionSubject)
        case (nil, nil): authorization = .none
        case (_?, _?): throw BenchError.usage("--token and --jwt-secret exclude each other")
        }
        if self.perConnectionSubject && self.jwtSecret == nil {
            throw BenchError.usage("--per-connection-subject needs --jwt-secret")
        }
        var headers: [(String, String)] = []
        for header in self.headers {
            guard let colon = header.firstIndex(of: ":"), colon != header.startIndex else {
                throw BenchError.usage("--header: expected 'name: value', got \"\(header)\"")
            }
            headers.append((String(header[..<colon]), header[header.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        return BenchSettings(
            target: target, mode: mode, durationNanos: duration, connections: self.connections, streams: self.streams,
            http2: self.http2, threads: self.threads, insecure: self.insecure, authorization: authorization,
            headers: headers, timeoutNanos: timeout, progress: !self.quiet
        )
    }
}
