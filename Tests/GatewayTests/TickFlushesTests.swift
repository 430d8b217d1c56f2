import NIOCore
import NIOEmbedded
import Testing

@testable import Gateway

/// `TickFlushes` on an `EmbeddedEventLoop`, whose `run()` stands for the end of a tick: what was
/// queued during the tick is flushed then, once, in the order it was queued.
@Suite("Flushes at the end of a tick")
struct TickFlushesTests {
    private final class Item: TickFlushing {
        let name: String
        let log: Log
        var onFlush: (() -> Void)?

        init(_ name: String, _ log: Log) {
            self.name = name
            self.log = log
        }

        func flushAtTickEnd() {
            self.log.names.append(self.name)
            self.onFlush?()
        }
    }

    private final class Log {
        var names: [String] = []
    }

    @Test("Items queued in a tick flush at its end, in order, once each")
    func order() {
        let loop = EmbeddedEventLoop()
        let flushes = TickFlushes(eventLoop: loop)
        let log = Log()
        let items = ["a", "b", "c"].map { Item($0, log) }
        for item in items { flushes.add(item) }
        #expect(log.names.isEmpty)
        loop.run()
        #expect(log.names == ["a", "b", "c"])
        loop.run()
        #expect(log.names == ["a", "b", "c"])

        // The next tick queues its own task again.
        flushes.add(items[1])
        loop.run()
        #expect(log.names == ["a", "b", "c", "b"])
    }

    @Test("An item queued by another's flush is flushed after the batch, in the same run of the loop")
    func queuedWhileFlushing() {
        let loop = EmbeddedEventLoop()
        let flushes = TickFlushes(eventLoop: loop)
        let log = Log()
        let first = Item("first", log), second = Item("second", log), late = Item("late", log)
        first.onFlush = { flushes.add(late) }
        flushes.add(first)
        flushes.add(second)
        loop.run()
        #expect(log.names == ["first", "second", "late"])
    }
}
