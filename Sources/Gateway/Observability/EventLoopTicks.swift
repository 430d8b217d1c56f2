import NIOCore
import NIOPosix
import Synchronization

/// How long each event-loop iteration kept its loop busy, as the `gateway_event_loop_tick_seconds`
/// histogram: an iteration of 5 ms delays every request that arrived during it by up to 5 ms, so
/// this is where a latency tail made by the gateway itself shows (Envoy's `loop_duration_us`).
///
/// NIO reports a tick after each iteration, but its start time is when the iteration's scheduled
/// tasks began, after the I/O events were handled. So the first handler to see bytes in an
/// iteration (TLS, the HTTP/1.1 or HTTP/2 codec, an upstream connection) stamps the loop's
/// `LoopSlot`, and the iteration counts from that stamp. Recorded on the loop's own thread: a
/// clock read per iteration and a few relaxed atomic adds, no lock and no allocation.
final class EventLoopTicks: NIOEventLoopMetricsDelegate {
    /// Upper bounds in seconds, from a tick that handled one request to a stall.
    static let buckets: [Double] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
    private static let bucketNanoseconds: [Int64] = buckets.map { Int64($0 * 1e9) }

    /// One cell per bucket, the last for +Inf.
    private let counts = AtomicCells(count: EventLoopTicks.buckets.count + 1)
    private let sumNanoseconds = Atomic<UInt64>(0)
    private let tasks = Atomic<UInt64>(0)

    /// One loop's stamp: when its current iteration began handling I/O (0: not yet). Unchecked:
    /// each slot is thread-specific, so only its loop's thread ever reaches it.
    final class LoopSlot: @unchecked Sendable {
        private var ioStart: UInt64 = 0
        /// Set by the first reported iteration: from then on the stamp is cleared after every
        /// iteration, so it may stand for "now". A loop of a group made without `EventLoopTicks`
        /// (tests, `EmbeddedEventLoop`) never clears it, and `now()` reads the clock instead.
        private var clearedEachIteration = false

        /// Called by the first handlers to see bytes; only the first call of an iteration reads the clock.
        @inline(__always)
        func ioBegins() {
            if self.ioStart == 0 { self.ioStart = NIODeadline.now().uptimeNanoseconds }
        }

        /// "Now" for a request's bookkeeping (its start, timer deadlines, upstream timing): when
        /// this iteration began handling I/O, one clock read shared by every request the
        /// iteration handles (HAProxy's `now_ns`, taken once per poll) instead of one per use —
        /// seven per HTTP/2 request, 1.1% of the B load's samples. At most one iteration old: a
        /// deadline from it falls due that much early, a duration from it counts the iteration's
        /// earlier work too. Call it on the slot's own loop.
        @inline(__always)
        func now() -> NIODeadline {
            guard self.clearedEachIteration else { return .now() }
            self.ioBegins()
            return .uptimeNanoseconds(self.ioStart)
        }

        /// The iteration's start (the I/O stamp, or the tasks' start without I/O), and a reset.
        fileprivate func iterationStart(tasksStart: NIODeadline) -> NIODeadline {
            self.clearedEachIteration = true
            defer { self.ioStart = 0 }
            guard self.ioStart != 0 else { return tasksStart }
            return min(NIODeadline.uptimeNanoseconds(self.ioStart), tasksStart)
        }
    }

    private static let slots = ThreadSpecificVariable<LoopSlot>()

    /// The calling thread's slot: call it on the event loop whose iterations the caller stamps.
    static func currentSlot() -> LoopSlot {
        if let slot = slots.currentValue { return slot }
        let slot = LoopSlot()
        slots.currentValue = slot
        return slot
    }

    func processedTick(info: NIOEventLoopTickInfo) {
        let start = Self.currentSlot().iterationStart(tasksStart: info.startTime)
        let busy = max(0, (info.endTime - start).nanoseconds)
        var index = 0
        while index < Self.bucketNanoseconds.count, busy > Self.bucketNanoseconds[index] { index += 1 }
        self.counts.add(1, at: index)
        self.sumNanoseconds.add(UInt64(busy), ordering: .relaxed)
        self.tasks.add(UInt64(info.numberOfTasks), ordering: .relaxed)
    }

    /// Cumulative bucket counts (the last is +Inf), the sum in seconds, and tasks run.
    func snapshot() -> (cumulative: [UInt64], sumSeconds: Double, tasks: UInt64) {
        var running: UInt64 = 0
        let cumulative = (0...Self.buckets.count).map { running += self.counts.load($0); return running }
        return (cumulative, Double(self.sumNanoseconds.load(ordering: .relaxed)) / 1e9, self.tasks.load(ordering: .relaxed))
    }

    /// Prometheus text for the histogram and the task counter.
    func render() -> String {
        let (cumulative, sum, tasks) = self.snapshot()
        let name = "gateway_event_loop_tick_seconds"
        var out = "# HELP \(name) Time each event-loop iteration kept its loop busy, I/O and tasks (a long one delays every request behind it).\n"
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
