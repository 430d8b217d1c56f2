import Foundation
import NIOCore
import NIOPosix
import TLSClient

func benchWallClockSeconds() -> Double { Date().timeIntervalSince1970 }

/// Runs one benchmark: spreads the connections over `threads` event loops (one `LoopWorker`
/// each), connects them all, starts every loop at the same scheduled instant, prints a progress
/// line each second, then merges the loops' histograms into one report.
public enum BenchRunner {
    public static func run(_ settings: BenchSettings, url: String, progress: @escaping @Sendable (String) -> Void) async throws -> BenchReport {
        if case .jwtSecret(let secret, _) = settings.authorization {
            do { _ = try BenchToken.mint(secret: secret, connection: nil, now: 0) } catch {
                throw BenchError.usage("--jwt-secret: \(error)")
            }
        }
        let tls: TLSClientContext?
        if settings.target.tls {
            do { tls = try TLSClientContext(alpn: settings.http2 ? ["h2"] : ["http/1.1"], insecure: settings.insecure) } catch {
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
        let end = start + settings.durationNanos
        let schedules: [RequestSchedule]?
        if case .fixedRate(let rate) = settings.mode {
            schedules = RequestSchedule.perLoop(startNanos: start, totalRate: rate, connectionsPerLoop: perLoop.map(\.count))
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
        var completedSoFar = 0
        while true {
            let tick = start + UInt64(second) * 1_000_000_000
            let now = NIODeadline.now().uptimeNanoseconds
            if tick > now { try? await Task.sleep(nanoseconds: tick - now) }
            var snapshots: [WorkerSnapshot] = []
            for (index, worker) in workers.enumerated() {
                snapshots.append(try await loops[index].submit { worker.value.snapshot() }.get())
            }
            let merged = BenchStats.merged(snapshots.map(\.interval))
            let allDone = snapshots.allSatisfy(\.finished)
            if merged.responses > 0 || merged.errors > 0 || tick <= end {
                timeline.append(BenchReport.interval(second: second, merged))
            }
            completedSoFar += merged.responses
            if settings.progress {
                let inFlight = snapshots.reduce(0) { $0 + $1.inFlight }
                let waiting = snapshots.reduce(0) { $0 + $1.waiting }
                var line = "\(String(format: "%3d", second))s  \(merged.responses) req/s  p50 \(fmtMs(merged.latency.valueAtPercentile(50)))"
                line += "  p99 \(fmtMs(merged.latency.valueAtPercentile(99)))  errors \(merged.errors)  in flight \(inFlight)"
                if schedules != nil { line += "  queued \(waiting)" }
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
        let elapsed = max(lastFinish, end) - start
        return BenchReport(settings: settings, url: url, stats: stats, requests: requests, elapsedNanos: elapsed, timeline: timeline)
    }

    private static func fmtMs(_ micros: UInt64) -> String { String(format: "%.2fms", Double(micros) / 1000) }
}
