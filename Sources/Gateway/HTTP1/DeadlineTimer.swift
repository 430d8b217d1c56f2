import NIOCore

/// What a `DeadlineTimer` calls when its scheduled check runs (on the owner's event loop).
protocol DeadlineTimerOwner: LoopTimerOwner {
    /// Passes `target` to the timer's `isDue(checkScheduledFor:horizon:timers:owner:)`.
    func deadlineCheck(scheduledFor target: NIODeadline)
}

extension DeadlineTimerOwner {
    /// A `DeadlineTimer` arms one check at a time; its tag is the check's target.
    func timerFired(_ timer: LoopTimers.Timer, tag: NIODeadline) {
        self.deadlineCheck(scheduledFor: tag)
    }
}

/// A connection's deadline (idle, client header, body stall, upstream response, pooled idle) kept
/// as a plain value that moves on every request. One scheduled check stands for it; the check is
/// re-armed only when it runs or when the deadline moves earlier than it (HAProxy's rule), so a
/// steady keep-alive request arms and disarms nothing. The check is a `LoopTimers` timer, not an
/// event-loop task of its own.
///
/// A check is never scheduled further ahead than `horizon`, the shortest delay its owner ever
/// sets: a deadline set afterwards is then never earlier than the armed check, and an idle
/// connection pays one wake-up per `horizon` instead of one task per request.
struct DeadlineTimer {
    private(set) var deadline: NIODeadline?
    private var checkAt: NIODeadline?
    private var check: (timers: LoopTimers, timer: LoopTimers.Timer)?

    /// Sets the deadline, scheduling a check only when none is armed at or before it.
    mutating func set(
        _ deadline: NIODeadline, now: NIODeadline, horizon: TimeAmount, timers: LoopTimers, owner: DeadlineTimerOwner
    ) {
        self.deadline = deadline
        if let checkAt = self.checkAt, checkAt <= deadline { return }
        self.schedule(min(deadline, now + horizon), from: now, timers: timers, owner: owner)
    }

    /// Drops the deadline; an armed check then finds nothing due and lapses.
    mutating func clear() { self.deadline = nil }

    /// Whether the deadline has passed at the check scheduled for `target`; if not, the next
    /// check is armed. A due deadline is cleared.
    mutating func isDue(
        checkScheduledFor target: NIODeadline, horizon: TimeAmount, timers: LoopTimers, owner: DeadlineTimerOwner
    ) -> Bool {
        guard target == self.checkAt else { return false }
        self.checkAt = nil
        self.check = nil
        guard let deadline = self.deadline else { return false }
        if deadline <= target {
            self.deadline = nil
            return true
        }
        // Counted from the check's own target, so a virtual clock (EmbeddedEventLoop) agrees.
        self.schedule(min(deadline, target + horizon), from: target, timers: timers, owner: owner)
        return false
    }

    /// Clears the deadline and the armed check, which holds its owner strongly: the owner calls
    /// this when it is torn down.
    mutating func cancel() {
        if let check = self.check { check.timers.disarm(check.timer) }
        self.check = nil
        self.checkAt = nil
        self.deadline = nil
    }

    private mutating func schedule(_ target: NIODeadline, from now: NIODeadline, timers: LoopTimers, owner: DeadlineTimerOwner) {
        if let check = self.check { check.timers.disarm(check.timer) }
        self.checkAt = target
        self.check = (timers, timers.arm(owner, in: target - now, tag: target))
    }
}
