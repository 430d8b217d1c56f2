import NIOCore

/// What a `LoopTimers` timer wakes, on the timers' event loop.
protocol LoopTimerOwner: AnyObject {
    /// `timer` is the value `arm` returned (an owner with several tells them apart by it); `tag`
    /// is the one given to `arm`.
    func timerFired(_ timer: LoopTimers.Timer, tag: NIODeadline)
}

/// The connection timers of one event loop (TLS handshake and close_notify waits, the deadlines of
/// `DeadlineTimer`): one heap of plain values, and one scheduled event-loop task for the earliest.
///
/// Why not a scheduled task each: scheduling one on swift-nio costs a promise, a closure and the
/// loop's task lock, and cancelling one a linear search of every task the loop has scheduled
/// (each element copied, with its reference counts). A new TLS connection armed and cancelled
/// three of them. Here arming and disarming are heap operations on 24-byte values, and the loop's
/// task is re-armed only when it runs or when a timer is due earlier than it (HAProxy's rule).
///
/// Used on its event loop only. An armed timer holds its owner until it fires or is disarmed.
final class LoopTimers {
    /// One armed timer. A timer that fired or was disarmed is never confused with a later one
    /// reusing its slot: the slot's generation has moved.
    struct Timer: Hashable, Sendable {
        fileprivate let slot: Int32
        fileprivate let generation: UInt32
    }

    private struct Entry {
        var fireAt: NIODeadline
        var tag: NIODeadline
        var slot: Int32
    }

    private struct Slot {
        var owner: LoopTimerOwner?
        var generation: UInt32 = 0
        /// Where the slot's entry is in `heap`; -1 when the slot is free.
        var heapIndex: Int32 = -1
    }

    let eventLoop: EventLoop
    /// A binary min-heap on `fireAt`; every move updates the slot's `heapIndex`.
    private var heap: [Entry] = []
    private var slots: [Slot] = []
    private var freeSlots: [Int32] = []
    private var wakeAt: NIODeadline?
    private var wake: Scheduled<Void>?

    init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Timers armed and not yet fired or disarmed.
    var armedCount: Int { self.heap.count }

    /// Calls `owner.timerFired` after `delay` on the loop's clock (an `EmbeddedEventLoop`'s in
    /// tests), unless disarmed first.
    func arm(_ owner: LoopTimerOwner, in delay: TimeAmount, tag: NIODeadline = .uptimeNanoseconds(0)) -> Timer {
        self.eventLoop.assertInEventLoop()
        let fireAt = self.eventLoop.now + delay
        let slot: Int32
        if let free = self.freeSlots.popLast() {
            slot = free
        } else {
            slot = Int32(self.slots.count)
            self.slots.append(Slot())
        }
        let index = self.heap.count
        self.slots[Int(slot)].owner = owner
        self.slots[Int(slot)].heapIndex = Int32(index)
        self.heap.append(Entry(fireAt: fireAt, tag: tag, slot: slot))
        self.siftUp(index)
        if let wakeAt = self.wakeAt, wakeAt <= fireAt {
            // The loop's task runs first and re-arms for what is then earliest.
        } else {
            self.scheduleWake(at: fireAt)
        }
        return Timer(slot: slot, generation: self.slots[Int(slot)].generation)
    }

    /// Stops `timer` if it is still armed; its owner is let go. The loop's task, if it was armed
    /// for this timer, stays and finds nothing due.
    func disarm(_ timer: Timer) {
        guard self.isArmed(timer) else { return }
        self.remove(at: Int(self.slots[Int(timer.slot)].heapIndex))
        self.free(timer.slot)
    }

    /// `disarm` for a timer kept in an optional, which is left nil.
    func disarm(_ timer: inout Timer?) {
        if let armed = timer { self.disarm(armed) }
        timer = nil
    }

    func isArmed(_ timer: Timer) -> Bool {
        let slot = Int(timer.slot)
        return slot < self.slots.count && self.slots[slot].generation == timer.generation && self.slots[slot].heapIndex >= 0
    }

    // MARK: - The loop's task

    private func scheduleWake(at deadline: NIODeadline) {
        self.wake?.cancel()
        self.wakeAt = deadline
        self.wake = self.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.fire()
        }
    }

    private func fire() {
        self.wakeAt = nil
        self.wake = nil
        let now = self.eventLoop.now
        var due: [(owner: LoopTimerOwner, timer: Timer, tag: NIODeadline)] = []
        while let first = self.heap.first, first.fireAt <= now {
            let slot = Int(first.slot)
            due.append((self.slots[slot].owner!, Timer(slot: first.slot, generation: self.slots[slot].generation), first.tag))
            self.remove(at: 0)
            self.free(first.slot)
        }
        if let first = self.heap.first { self.scheduleWake(at: first.fireAt) }
        // Owners may arm or disarm timers from here: the heap is consistent by now.
        for entry in due { entry.owner.timerFired(entry.timer, tag: entry.tag) }
    }

    // MARK: - Slots and heap

    private func free(_ slot: Int32) {
        let index = Int(slot)
        self.slots[index].owner = nil
        self.slots[index].generation &+= 1
        self.slots[index].heapIndex = -1
        self.freeSlots.append(slot)
    }

    private func remove(at index: Int) {
        let last = self.heap.count - 1
        if index != last {
            self.heap.swapAt(index, last)
            self.slots[Int(self.heap[index].slot)].heapIndex = Int32(index)
        }
        self.heap.removeLast()
        if index < self.heap.count {
            self.siftDown(index)
            self.siftUp(index)
        }
    }

    private func siftUp(_ start: Int) {
        var index = start
        let entry = self.heap[index]
        while index > 0 {
            let parent = (index - 1) / 2
            guard entry.fireAt < self.heap[parent].fireAt else { break }
            self.heap[index] = self.heap[parent]
            self.slots[Int(self.heap[index].slot)].heapIndex = Int32(index)
            index = parent
        }
        self.heap[index] = entry
        self.slots[Int(entry.slot)].heapIndex = Int32(index)
    }

    private func siftDown(_ start: Int) {
        var index = start
        let entry = self.heap[index]
        let count = self.heap.count
        while true {
            var child = 2 * index + 1
            guard child < count else { break }
            if child + 1 < count, self.heap[child + 1].fireAt < self.heap[child].fireAt { child += 1 }
            guard self.heap[child].fireAt < entry.fireAt else { break }
            self.heap[index] = self.heap[child]
            self.slots[Int(self.heap[index].slot)].heapIndex = Int32(index)
            index = child
        }
        self.heap[index] = entry
        self.slots[Int(entry.slot)].heapIndex = Int32(index)
    }
}
