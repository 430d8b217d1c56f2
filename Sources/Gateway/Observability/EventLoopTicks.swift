import NIOCore
import NIOPosix
import Synchronization

/// How long each event-loop tick kept its loop busy (from the first event it handled to the last),
/// as the `gateway_event_loop_tick_seconds` histogram: a tick of 5 ms delays every request that
/// arrived during it by up to 5 ms, so this is where a latency tail made by the gateway itself
/// shows (Envoy's `loop_duration_us`). Recorded by NIO after every tick on the loop's own thread:
/// a few relaxed atomic adds, no lock and no allocation.
final class EventLoopTicks: NIOEventLoopMetricsDelegate {
    /// Upper bounds in seconds, from a tick that handled one request to a stall.
    static let buckets: [Double] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
    private static let bucketNanoseconds: [Int64] = buckets.map { Int64($0 * 1e9) }

    /// One atomic per bucket, the last for +Inf (`Atomic` cannot live in an array by itself).
    private final class Count: Sendable { let value = Atomic<UInt64>(0) }
    private let counts: [Count] = (0...EventLoopTicks.buckets.count).map { _ in Count() }
    private let sumNanoseconds = Atomic<UInt64>(0)
    private let tasks = Atomic<UInt64>(0)

    func processedTick(info: NIOEventLoopTickInfo) {
        let busy = max(0, (info.endTime - info.startTime).nanoseconds)
        var index = 0
        while index < Self.bucketNanoseconds.count, busy > Self.bucketNanoseconds[index] { index += 1 }
        self.counts[index].value.add(1, ordering: .relaxed)
        self.sumNanoseconds.add(UInt64(busy), ordering: .relaxed)
        self.tasks.add(UInt64(info.numberOfTasks), ordering: .relaxed)
    }

    /// Cumulative bucket counts (the last is +Inf), the sum in seconds, and tasks run.
    func snapshot() -> (cumulative: [UInt64], sumSeconds: Double, tasks: UInt64) {
        var running: UInt64 = 0
        let cumulative = self.counts.map { running += $0.value.load(ordering: .relaxed); return running }
        return (cumulative, Double(self.sumNanoseconds.load(ordering: .relaxed)) / 1e9, self.tasks.load(ordering: .relaxed))
    }

    /// Prometheus text for the histogram and the task counter.
    func render() -> String {
        let (cumulative, sum, tasks) = self.snapshot()
        let name = "gateway_event_loop_tick_seconds"
        var out = "# HELP \(name) Time each event-loop tick kept its loop busy (a long tick delays every request behind it).\n"
        out += "# TYPE \(name) histogram\n"
        for (bound, count) in zip(Self.buckets, cumulative) {
            out += "\(name)_bucket{le=\"\(GatewayMetrics.number(bound))\"} \(count)\n"
        }
        out += "\(name)_bucket{le=\"+Inf\"} \(cumulative.last ?? 0)\n"
        out += "\(name)_sum \(GatewayMetrics.number(sum))\n"
        out += "\(name)_count \(cumulative.last ?? 0)\n"
        out += "# HELP gateway_event_loop_tasks_total Tasks (scheduled work, not I/O events) the event loops ran.\n"
        out += "# TYPE gateway_event_loop_tasks_total counter\ngateway_event_loop_tasks_total \(tasks)\n"
        return out
    }
}
