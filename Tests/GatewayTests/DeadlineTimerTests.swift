import NIOCore
import NIOEmbedded
import Testing

@testable import Gateway

/// `DeadlineTimer` on an `EmbeddedEventLoop`: a deadline that moves later arms nothing, one that
/// moves earlier replaces the armed check, and a due deadline is reported once, at its time.
@Suite("Deadline timer")
struct DeadlineTimerTests {
    private final class Owner: DeadlineTimerOwner {
        let loop = EmbeddedEventLoop()
        lazy var timers = LoopTimers(eventLoop: self.loop)
        var timer = DeadlineTimer()
        var checks = 0
        var due = 0

        func deadlineCheck(scheduledFor target: NIODeadline) {
            self.checks += 1
            if self.timer.isDue(checkScheduledFor: target, horizon: .seconds(4), timers: self.timers, owner: self) { self.due += 1 }
        }

        func set(_ deadline: NIODeadline, now: NIODeadline) {
            self.timer.set(deadline, now: now, horizon: .seconds(4), timers: self.timers, owner: self)
        }
    }

    /// A fixed base keeps the arithmetic exact: the embedded loop's clock moves only when told.
    private let base = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    @Test("A deadline that moves later rides the armed check; it fires at its time")
    func laterDeadline() {
        let owner = Owner()
        owner.set(self.base + .seconds(10), now: self.base)
        owner.set(self.base + .seconds(20), now: self.base)
        #expect(owner.timers.armedCount == 1)
        owner.loop.advanceTime(by: .seconds(4))
        #expect(owner.checks == 1 && owner.due == 0)
        owner.loop.advanceTime(by: .seconds(16) - .nanoseconds(1))
        #expect(owner.checks == 4 && owner.due == 0)
        owner.loop.advanceTime(by: .nanoseconds(1))
        #expect(owner.checks == 5 && owner.due == 1)
        // Nothing is armed once the deadline fired.
        owner.loop.advanceTime(by: .seconds(60))
        #expect(owner.checks == 5 && owner.due == 1)
    }

    @Test("A deadline that moves earlier replaces the armed check")
    func earlierDeadline() {
        let owner = Owner()
        owner.set(self.base + .seconds(3), now: self.base)
        owner.set(self.base + .seconds(1), now: self.base)
        owner.loop.advanceTime(by: .seconds(1))
        #expect(owner.checks == 1 && owner.due == 1)
        // The check armed for the first deadline was cancelled.
        owner.loop.advanceTime(by: .seconds(10))
        #expect(owner.checks == 1 && owner.due == 1)
    }

    @Test("A cleared deadline is never due; the armed check lapses without re-arming")
    func cleared() {
        let owner = Owner()
        owner.set(self.base + .seconds(2), now: self.base)
        owner.timer.clear()
        owner.loop.advanceTime(by: .seconds(10))
        #expect(owner.checks == 1 && owner.due == 0)
        owner.loop.advanceTime(by: .seconds(10))
        #expect(owner.checks == 1)
    }

    @Test("Cancel drops the armed check (it holds its owner)")
    func cancelled() {
        let owner = Owner()
        owner.set(self.base + .seconds(2), now: self.base)
        owner.timer.cancel()
        #expect(owner.timers.armedCount == 0)
        owner.loop.advanceTime(by: .seconds(10))
        #expect(owner.checks == 0 && owner.due == 0)
    }
}
