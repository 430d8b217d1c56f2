import Foundation
import Synchronization
import Testing

@testable import Gateway

@Suite("Reload sequencing")
struct ReloadSequencerTests {
    final class Trace: Sendable {
        let prepared = Mutex<[Int]>([])
        let applied = Mutex<[Int]>([])
        // Prepares and applies are counted apart: a prepare may run while an earlier reload's
        // apply does (that is the design); two prepares, or two applies, at once may not.
        let preparing = Atomic<Int>(0)
        let mostPreparing = Atomic<Int>(0)
        let applying = Atomic<Int>(0)
        let mostApplying = Atomic<Int>(0)
    }

    /// Reloads asked for at once from many tasks: prepares never overlap, applies run one at a
    /// time, each exactly once, in the order their prepares ran (so the last read config wins).
    @Test func overlappingReloadsAreSerializedInPrepareOrder() async {
        let sequencer = ReloadSequencer()
        let trace = Trace()
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<40 {
                group.addTask {
                    let result: Result<Int, ConfigErrors> = sequencer.submit(
                        prepare: {
                            let running = trace.preparing.wrappingAdd(1, ordering: .sequentiallyConsistent).newValue
                            trace.mostPreparing.max(running, ordering: .sequentiallyConsistent)
                            trace.prepared.withLock { $0.append(index) }
                            trace.preparing.wrappingSubtract(1, ordering: .sequentiallyConsistent)
                            return .success(index)
                        },
                        apply: { value in
                            let running = trace.applying.wrappingAdd(1, ordering: .sequentiallyConsistent).newValue
                            trace.mostApplying.max(running, ordering: .sequentiallyConsistent)
                            // Suspends mid-apply, where an unserialized reload would start another.
                            try? await Task.sleep(for: .milliseconds(2))
                            await Task.yield()
                            trace.applied.withLock { $0.append(value) }
                            trace.applying.wrappingSubtract(1, ordering: .sequentiallyConsistent)
                        }
                    )
                    #expect((try? result.get()) == index)
                }
            }
        }
        await sequencer.settled()
        #expect(trace.mostPreparing.load(ordering: .sequentiallyConsistent) == 1)
        #expect(trace.mostApplying.load(ordering: .sequentiallyConsistent) == 1)
        let prepared = trace.prepared.withLock { $0 }
        #expect(prepared.count == 40)
        #expect(trace.applied.withLock { $0 } == prepared)
    }

    @Test func refusedReloadIsNeverApplied() async {
        let sequencer = ReloadSequencer()
        let applied = Atomic<Int>(0)
        let errors = ConfigErrors(errors: [ConfigError(path: "config", reason: "bad")])
        let refused: Result<Int, ConfigErrors> = sequencer.submit(
            prepare: { .failure(errors) }, apply: { _ in applied.add(1, ordering: .relaxed) }
        )
        let accepted: Result<Int, ConfigErrors> = sequencer.submit(
            prepare: { .success(7) }, apply: { _ in applied.add(10, ordering: .relaxed) }
        )
        await sequencer.settled()
        #expect(throws: ConfigErrors.self) { try refused.get() }
        #expect((try? accepted.get()) == 7)
        #expect(applied.load(ordering: .relaxed) == 10)
    }
}

@Suite("Access log memory bound")
struct AccessLogBoundTests {
    func record(path: String) -> AccessLogRecord {
        AccessLogRecord(
            time: Date(), requestID: "rid", clientIP: "192.0.2.1", method: "GET", route: "api", path: Substring(path),
            status: 200, bytesIn: 0, bytesOut: 0, durationSeconds: 0, upstreamSeconds: nil, protocolName: "HTTP/1.1",
            tlsVersion: nil, rateLimit: nil, subjectHash: nil, upstreamEndpoint: nil
        )
    }

    /// The bound is in bytes: long paths take more of it than short ones.
    @Test func queueIsBoundedInBytes() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let dropped = Atomic<Int>(0)
        let writer = AccessLogWriter(fileDescriptor: fds[1], capacityBytes: 64 << 10, onDrop: { dropped.add($0, ordering: .relaxed) })
        writer.stop()  // the test drives the flushes
        let long = self.record(path: "/" + String(repeating: "a", count: 8 << 10))
        for _ in 0..<100 { writer.log(long) }
        let fitted = (64 << 10) / long.estimatedBytes
        #expect(fitted >= 6 && fitted <= 8)
        #expect(dropped.load(ordering: .relaxed) == 100 - fitted)
        writer.flush()
        // Written: the budget is free again.
        let short = self.record(path: "/s")
        writer.log(short)
        #expect(dropped.load(ordering: .relaxed) == 100 - fitted)
    }

    /// A reader that never reads: the writer thread blocks in `write`, `log` keeps returning at
    /// once, and what is held stays within the bound while lines are dropped and counted.
    @Test func stalledReaderNeverBlocksLogging() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let dropped = Atomic<Int>(0)
        let writer = AccessLogWriter(fileDescriptor: fds[1], capacityBytes: 256 << 10, onDrop: { dropped.add($0, ordering: .relaxed) })
        let line = self.record(path: "/api/bookings/123")
        let total = 200_000
        for _ in 0..<total { writer.log(line) }
        // Far more than the pipe (64 KiB) and the bound (256 KiB) hold together.
        let held = (256 << 10) / line.estimatedBytes
        let pipeLines = (1 << 20) / line.estimatedBytes
        #expect(dropped.load(ordering: .relaxed) >= total - held - pipeLines)
        // Unblock the writer so `stop` returns; the reader ends at EOF once the write end closes.
        let done = DispatchSemaphore(value: 0)
        let readEnd = fds[0]
        let reader = Thread {
            var sink = [UInt8](repeating: 0, count: 65_536)
            while read(readEnd, &sink, sink.count) > 0 {}
            done.signal()
        }
        reader.start()
        writer.stop()
        close(fds[1])
        done.wait()
        close(fds[0])
    }
}
