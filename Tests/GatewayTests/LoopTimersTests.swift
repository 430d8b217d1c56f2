import NIOCore
import NIOEmbedded
import Testing

@testable import Gateway

/// `LoopTimers` on an `EmbeddedEventLoop`: timers fire in deadline order at their time, once; a
/// disarmed one never fires and lets its owner go; the loop holds one task however many are armed.
@Suite("Loop timers")
struct LoopTimersTests {
    private final class Owner: LoopTimerOwner {
        var fired: [(LoopTimers.Timer, NIODeadline)] = []
        var onFire: ((LoopTimers.Timer) -> Void)?

        func timerFired(_ timer: LoopTimers.Timer, tag: NIODeadline) {
            self.fired.append((timer, tag))
            self.onFire?(timer)
        }
    }

    @Test("Timers fire at their time, in deadline order, with their tags")
    func order() {
        let loop = EmbeddedEventLoop()
        let timers = LoopTimers(eventLoop: loop)
        let owner = Owner()
        var expected: [(Int64, LoopTimers.Timer)] = []
        for seconds: Int64 in [5, 1, 3, 2, 4, 1] {
            expected.append((seconds, timers.arm(owner, in: .seconds(seconds), tag: .uptimeNanoseconds(UInt64(seconds)))))
        }
        #expect(timers.armedCount == 6)
        loop.advanceTime(by: .milliseconds(999))
        #expect(owner.fired.isEmpty)
        loop.advanceTime(by: .milliseconds(1))
        #expect(owner.fired.count == 2)
        loop.advanceTime(by: .seconds(10))
        #expect(owner.fired.map(\.1.uptimeNanoseconds) == [1, 1, 2, 3, 4, 5])
        #expect(Set(owner.fired.map(\.0)) == Set(expected.map(\.1)))
        #expect(timers.armedCount == 0)
    }

    @Test("A disarmed timer never fires and lets its owner go; its slot's next timer is another")
    func disarm() {
        let loop = EmbeddedEventLoop()
        let timers = LoopTimers(eventLoop: loop)
        weak var released: Owner?
        let kept = Owner()
        do {
            let owner = Owner()
            released = owner
            let timer = timers.arm(owner, in: .seconds(1))
            timers.disarm(timer)
            #expect(!timers.isArmed(timer))
            let next = timers.arm(kept, in: .seconds(2))
            #expect(next != timer)
            timers.disarm(timer)  // stale: must not touch the slot's new timer
            #expect(timers.isArmed(next))
        }
        #expect(released == nil)
        loop.advanceTime(by: .seconds(5))
        #expect(kept.fired.count == 1)
    }

    @Test("An owner may arm from its callback; the earlier of many timers moves the loop's task")
    func rearmFromCallback() {
        let loop = EmbeddedEventLoop()
        let timers = LoopTimers(eventLoop: loop)
        let owner = Owner()
        var rearmed = 0
        owner.onFire = { _ in
            if rearmed < 3 {
                rearmed += 1
                _ = timers.arm(owner, in: .seconds(1))
            }
        }
        _ = timers.arm(owner, in: .seconds(10))
        _ = timers.arm(owner, in: .seconds(1))
        loop.advanceTime(by: .seconds(4))
        #expect(owner.fired.count == 4)
        loop.advanceTime(by: .seconds(6))
        #expect(owner.fired.count == 5)
    }

    @Test("Random arms and disarms keep the heap in order")
    func randomized() {
        let loop = EmbeddedEventLoop()
        let timers = LoopTimers(eventLoop: loop)
        let owner = Owner()
        var generator = SystemRandomNumberGenerator()
        var live: [LoopTimers.Timer: Int64] = [:]
        for _ in 0..<2000 {
            if live.isEmpty || Bool.random(using: &generator) {
                let millis = Int64.random(in: 1...10_000, using: &generator)
                live[timers.arm(owner, in: .milliseconds(millis), tag: .uptimeNanoseconds(UInt64(millis)))] = millis
            } else {
                let victim = live.keys.randomElement(using: &generator)!
                timers.disarm(victim)
                live[victim] = nil
            }
        }
        #expect(timers.armedCount == live.count)
        loop.advanceTime(by: .seconds(11))
        let tags = owner.fired.map(\.1.uptimeNanoseconds)
        #expect(tags == tags.sorted())
        #expect(Set(owner.fired.map(\.0)) == Set(live.keys))
    }
}
