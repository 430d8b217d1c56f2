import NIOCore

/// What a `DeadlineTimer` calls when its scheduled check runs (on the owner's event loop).
protocol DeadlineTimerOwner: AnyObject {
    /// Passes `target` to the timer's `isDue(checkScheduledFor:horizon:loop:owner:)`.
    func deadlineCheck(scheduledFor target: NIODeadline)
}

/// A connection's deadline (idle, client header, body stall, upstream response, pooled idle) kept
/// as a plain value that moves on every request. One scheduled check stands for it; the check is
/// re-armed only when it runs or when the deadline moves earlier than it (HAProxy's rule), so a
/// steady keep-alive request schedules and cancels no event-loop task: scheduling one costs a
/// promise, closures and the loop's task lock, and cancelling one a boxed error.
///
/// A check is never scheduled further ahead than `horizon`, the shortest delay its owner ever
/// sets: a deadline set afterwards is then never earlier than the armed check, and an idle
/// connection pays one wake-up per `horizon` instead of one task per request.
struct DeadlineTimer {
    private(set) var deadline: NIODeadline?
    private var checkAt: NIODeadline?
    private var task: Scheduled<Void>?

    /// Sets the deadline, scheduling a check only when none is armed at or before it.
    mutating func set(
        _ deadline: NIODeadline, now: NIODeadline, horizon: TimeAmount, loop: EventLoop, owner: DeadlineTimerOwner
    ) {
        self.deadline = deadline
        if let checkAt = self.checkAt, checkAt <= deadline { return }
        self.schedule(min(deadline, now + horizon), from: now, loop: loop, owner: owner)
    }

    /// Drops the deadline; an armed check then finds nothing due and lapses.
    mutating func clear() { self.deadline = nil }

    /// Whether the deadline has passed at the check scheduled for `target`; if not, the next
    /// check is armed. A due deadline is cleared.
    mutating func isDue(
        checkScheduledFor target: NIODeadline, horizon: TimeAmount, loop: EventLoop, owner: DeadlineTimerOwner
    ) -> Bool {
        guard target == self.checkAt else { return false }
        self.checkAt = nil
        self.task = nil
        guard let deadline = self.deadline else { return false }
        if deadline <= target {
            self.deadline = nil
            return true
        }
        // Counted from the check's own target, so a virtual clock (EmbeddedEventLoop) agrees.
        self.schedule(min(deadline, target + horizon), from: target, loop: loop, owner: owner)
        return false
    }

    /// Clears the deadline and the armed check, which holds its owner strongly: the owner calls
    /// this when it is torn down.
    mutating func cancel() {
        self.task?.cancel()
        self.task = nil
        self.checkAt = nil
        self.deadline = nil
    }

    private mutating func schedule(_ target: NIODeadline, from now: NIODeadline, loop: EventLoop, owner: DeadlineTimerOwner) {
        self.task?.cancel()
        self.checkAt = target
        self.task = loop.assumeIsolated().scheduleTask(in: target - now) {
            owner.deadlineCheck(scheduledFor: target)
        }
    }
}
