import Foundation
import NIOCore
import NIOPosix
import TLSClient

func benchWallClockSeconds() -> Double { Date().timeIntervalSince1970 }

/// Runs one benchmark: spreads the connections over `threads` event loops (one `LoopWorker`
/// each), connects them all, starts every loop at the same scheduled instant, prints a progress
/// line each second, then merges the loops' histograms into one report.
public enum BenchRunner {
    /// What can be refused before any socket opens: a secret too short to sign with, a target that
    /// mints tokens in a run without a secret.
    public static func check(_ settings: BenchSettings) throws(BenchError) {
        if case .jwtSecret(let secret, _) = settings.authorization {
            do { _ = try BenchToken.mint(secret: secret, connection: nil, now: 0) } catch {
                throw BenchError.usage("--jwt-secret: \(error)")
            }
        } else if settings.requests.contains(where: { if case .minted = $0.token { true } else { false } }) {
            throw BenchError.usage("a target mints tokens: give --jwt-secret (or jwt_secret_env in the scenario)")
        }
    }

    public static func run(_ settings: BenchSettings, url: String, progress: @escaping @Sendable (String) -> Void) async throws -> BenchReport {
        try self.check(settings)
        let tls: TLSClientContext?
        if settings.target.tls {
            do { tls = try TLSClientContext(alpn: settings.http2 ? ["h2"] : ["http/1.1"], insecure: settings.insecure, logsKeys: true) } catch {
                throw BenchError.usage("\(error)")
            }
        } else {
            tls = nil
        }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: settings.effectiveThreads)
        let outcome: Result<BenchReport, any Error>
        do {
            outcome = .success(try await self.run(settings, url: url, tls: tls, group: group, progress: progress))
        } catch {
            outcome = .failure(error)
        }
        try? await group.shutdownGracefully()
        return try outcome.get()
    }

    private static func run(
        _ settings: BenchSettings, url: String, tls: TLSClientContext?, group: MultiThreadedEventLoopGroup,
        progress: @escaping @Sendable (String) -> Void
    ) async throws -> BenchReport {
        let threads = settings.effectiveThreads
        let loops = Array(group.makeIterator())
        // Connection i lives on loop i mod threads.
        let perLoop: [[Int]] = (0..<threads).map { loop in Array(stride(from: loop, to: settings.connections, by: threads)) }
        let workers: [NIOLoopBound<LoopWorker>] = try await withThrowingTaskGroup(of: (Int, NIOLoopBound<LoopWorker>).self) { tasks in
            for (index, loop) in loops.enumerated() {
                tasks.addTask {
                    let worker = try await loop.submit {
                        NIOLoopBound(LoopWorker(loop: loop, settings: settings, connectionIndices: perLoop[index], tlsContext: tls), eventLoop: loop)
                    }.get()
                    return (index, worker)
                }
            }
            var all: [(Int, NIOLoopBound<LoopWorker>)] = []
            for try await worker in tasks { all.append(worker) }
            return all.sorted { $0.0 < $1.0 }.map(\.1)
        }

        // Connect everything before the clock starts: handshakes are not part of the latency.
        var ready = 0
        for (index, worker) in workers.enumerated() {
            ready += try await loops[index].flatSubmit { worker.value.connectAll() }.get()
        }
        guard ready > 0 else {
            let reason = try await loops[0].submit { workers[0].value.firstConnectError }.get() ?? "unknown error"
            for (index, worker) in workers.enumerated() { try? await loops[index].submit { worker.value.closeAll() }.get() }
            throw BenchError.usage("could not connect to \(settings.target.host):\(settings.target.port): \(reason)")
        }
        if ready < settings.connections {
            progress("bench: only \(ready) of \(settings.connections) connections could be opened")
        }

        let start = NIODeadline.now().uptimeNanoseconds + 50_000_000
        // The recorded run begins after the warm-up; seconds in the timeline count from there.
        let recordedStart = start + settings.warmupNanos
        let end = recordedStart + settings.durationNanos
        let schedules: [StagedSchedule]?
        if case .fixedRate = settings.mode {
            schedules = StagedSchedule.perLoop(startNanos: start, stages: settings.scheduledStages, connectionsPerLoop: perLoop.map(\.count))
        } else {
            schedules = nil
        }
        var finished: [EventLoopFuture<WorkerResult>] = []
        for (index, worker) in workers.enumerated() {
            let schedule = schedules?[index]
            finished.append(try await loops[index].submit { worker.value.start(startNanos: start, endNanos: end, schedule: schedule) }.get())
        }

        // Once a second: the interval's latencies from every loop, merged, for the progress line
        // and the timeline.
        var timeline: [BenchReport.Interval] = []
        var second = 1
        let warmupSeconds = Int((settings.warmupNanos + 999_999_999) / 1_000_000_000)
        let stageEnds = settings.stages.reduce(into: [UInt64]()) { $0.append(($0.last ?? recordedStart) + $1.durationNanos) }
        while true {
            // Warm-up ticks end at the recorded start, so recorded seconds line up with it.
            let tick = second <= warmupSeconds
                ? min(start + UInt64(second) * 1_000_000_000, recordedStart)
                : recordedStart + UInt64(second - warmupSeconds) * 1_000_000_000
            let now = NIODeadline.now().uptimeNanoseconds
            if tick > now { try? await Task.sleep(nanoseconds: tick - now) }
            var snapshots: [WorkerSnapshot] = []
            for (index, worker) in workers.enumerated() {
                snapshots.append(try await loops[index].submit { worker.value.snapshot() }.get())
            }
            let merged = BenchStats.merged(snapshots.map(\.interval))
            let allDone = snapshots.allSatisfy(\.finished)
            let recordedSecond = second - warmupSeconds
            if recordedSecond >= 1 && (merged.responses > 0 || merged.errors > 0 || tick <= end) {
                timeline.append(BenchReport.interval(second: recordedSecond, merged))
            }
            if settings.progress {
                let inFlight = snapshots.reduce(0) { $0 + $1.inFlight }
                let waiting = snapshots.reduce(0) { $0 + $1.waiting }
                var line: String
                if recordedSecond < 1 {
                    let warm = snapshots.reduce(0) { $0 + $1.warmupResponses }
                    line = "warm-up \(second)s  \(warm) req/s (not recorded)"
                } else {
                    line = "\(String(format: "%3d", recordedSecond))s  \(merged.responses) req/s  p99 \(fmtMs(merged.latency.valueAtPercentile(99)))"
                    line += "  p50 \(fmtMs(merged.latency.valueAtPercentile(50)))  errors \(merged.errors)"
                }
                line += "  in flight \(inFlight)"
                if schedules != nil { line += "  queued \(waiting)" }
                if stageEnds.count > 1, let stage = stageEnds.firstIndex(where: { tick <= $0 }), recordedSecond >= 1 {
                    line += "  stage \(stage + 1)/\(stageEnds.count) at \(Int(settings.stages[stage].rate))/s"
                }
                progress(line)
            }
            if allDone || tick > end + 10_000_000_000 { break }
            second += 1
        }

        var results: [WorkerResult] = []
        for future in finished { results.append(try await future.get()) }
        let stats = BenchStats.merged(results.map(\.stats))
        let lastFinish = results.map(\.finishedNanos).max() ?? end
        let requests = BenchReport.Requests(
            scheduled: results.reduce(0) { $0 + $1.scheduled }, sent: results.reduce(0) { $0 + $1.sent },
            completed: stats.responses, unsent: results.reduce(0) { $0 + $1.unsent }
        )
        // Throughput over the run proper: responses that came in during the drain are few.
        let elapsed = max(lastFinish, end) - recordedStart
        var report = BenchReport(settings: settings, url: url, stats: stats, requests: requests, elapsedNanos: elapsed, timeline: timeline)
        func merged(_ parts: (WorkerResult) -> [BenchStats]) -> [BenchStats] {
            results.map(parts).reduce(into: [BenchStats]()) { total, part in
                if total.isEmpty { total = part } else { for index in part.indices { total[index].merge(part[index]) } }
            }
        }
        func summed(_ parts: (WorkerResult) -> [Int]) -> [Int] {
            results.map(parts).reduce(into: [Int]()) { total, part in
                if total.isEmpty { total = part } else { for index in part.indices { total[index] += part[index] } }
            }
        }
        report.addSections(
            settings: settings, targetStats: merged(\.targetStats), targetSent: summed(\.targetSent),
            stageStats: merged(\.stageStats), stageScheduled: summed(\.stageScheduled)
        )
        return report
    }

    private static func fmtMs(_ micros: UInt64) -> String { String(format: "%.2fms", Double(micros) / 1000) }
}
