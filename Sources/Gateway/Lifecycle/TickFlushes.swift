import NIOCore

/// Output a `TickFlushes` sends once the event loop's batch of I/O events is handled.
protocol TickFlushing: AnyObject {
    func flushAtTickEnd()
}

/// Writes gathered while the event loop handles one batch of I/O events, flushed together once
/// the batch is over (swift-nio runs queued tasks after a tick's I/O), as HAProxy sends from its
/// tasklets after polling.
///
/// Why: a flush per upstream request and per response, each as it was written, woke the process
/// at the other end once per request whenever it had gone idle in between. On one machine's
/// loopback that was a wake-up (an inter-processor interrupt, costly in a VM) per request on the
/// peers' core, 1.07 per request against HAProxy's 0.03; with the flushes gathered, 0.05 (results
/// in `benchmarks/results/2026-12-02-session16.md`). A tick holds what its events produced, so a
/// lone request waits for nothing.
///
/// Used on its event loop only. A queued item is held until its flush.
final class TickFlushes {
    let eventLoop: EventLoop
    private var queued: [any TickFlushing] = []
    /// The batch being flushed; an item's flush may queue others, which go in the next batch.
    private var flushing: [any TickFlushing] = []
    private var taskQueued = false
    /// Made once, so that queuing the loop's task allocates nothing. It holds `self`: the loop's
    /// resources live as long as the loop.
    private lazy var task: () -> Void = { self.flushAll() }

    init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Flushes `item` at the end of this tick, once per `add` (the items keep their own "queued"
    /// flag, so a second `add` is a call that finds nothing left to flush).
    func add(_ item: any TickFlushing) {
        self.queued.append(item)
        guard !self.taskQueued else { return }
        self.taskQueued = true
        self.eventLoop.assumeIsolated().execute(self.task)
    }

    private func flushAll() {
        self.taskQueued = false
        swap(&self.queued, &self.flushing)
        // Each item moved out and released after its flush: a `for` over the array retained and
        // released every item once more. Reversed first so that they still go in queued order
        // (about one reference count per item: still one fewer).
        self.flushing.reverse()
        while let item = self.flushing.popLast() { item.flushAtTickEnd() }
    }
}
