import Testing
@testable import GatewayBench

/// A discrete-event simulation on a fake clock with the pieces the event loops use
/// (`OpenLoopQueue`, `openLoopLatencyMicros`, `BenchStats`): one connection slot, a server that
/// answers in 1 ms, except that it stalls for a whole second in the middle of the run.
private struct StallSimulation {
    static let ms: UInt64 = 1_000_000
    let rate: Double = 100  // one request every 10 ms
    let serviceTime: UInt64 = 1 * ms
    let stallStart: UInt64 = 1000 * ms
    let stallEnd: UInt64 = 2000 * ms
    let end: UInt64 = 3000 * ms

    /// When the server answers a request it received at `sent`.
    func responseTime(sentAt sent: UInt64) -> UInt64 {
        if sent >= self.stallStart && sent < self.stallEnd { return self.stallEnd + self.serviceTime }
        return sent + self.serviceTime
    }

    struct Outcome {
        var corrected = BenchStats()
        /// What a closed-loop tool that times from the actual send would report.
        var naive = BenchStats()
        /// Latencies (ms) of requests by scheduled time, in order.
        var timeline: [(scheduledMs: UInt64, latencyMs: UInt64)] = []
        var scheduled = 0
    }

    func run() -> Outcome {
        var queue = OpenLoopQueue(schedule: RequestSchedule(startNanos: 0, ratePerSecond: self.rate), endNanos: self.end)
        var outcome = Outcome()
        outcome.scheduled = queue.total
        var now: UInt64 = 0
        var busyUntil: UInt64? = nil
        var inFlight: (scheduled: UInt64, sent: UInt64)? = nil
        while !queue.isFinished || inFlight != nil {
            // Next event: a response, or the next request falling due.
            let nextDue = queue.nextWakeup ?? .max
            if let done = busyUntil, done <= nextDue || queue.waiting > 0 {
                now = done
                let request = inFlight!
                outcome.corrected.recordResponse(status: 200, latencyMicros: openLoopLatencyMicros(scheduledNanos: request.scheduled, completedNanos: now))
                outcome.naive.recordResponse(status: 200, latencyMicros: (now - request.sent) / 1000)
                outcome.timeline.append((request.scheduled / Self.ms, (now - request.scheduled) / Self.ms))
                inFlight = nil
                busyUntil = nil
            } else if nextDue != .max {
                now = max(now, nextDue)
            }
            queue.advance(to: now)
            if inFlight == nil, let scheduled = queue.takeNext() {
                inFlight = (scheduled, now)
                busyUntil = self.responseTime(sentAt: now)
            }
        }
        return outcome
    }
}

@Suite struct CoordinatedOmissionTests {
    @Test func aStalledServerShowsAsQueueingLatencyNotFewerSamples() {
        let outcome = StallSimulation().run()
        // Every scheduled request got a latency: the stall did not shrink the sample count.
        #expect(outcome.scheduled == 300)
        #expect(Int(outcome.corrected.latency.totalCount) == 300)
        #expect(outcome.naive.latency.totalCount == outcome.corrected.latency.totalCount)

        // Before the stall: the server's 1 ms.
        let before = outcome.timeline.filter { $0.scheduledMs < 1000 }
        #expect(before.allSatisfy { $0.latencyMs <= 1 })
        // Requests due during the stall waited for it: ~1 s for the first, less for later ones,
        // but all of them far above the server's 1 ms.
        let during = outcome.timeline.filter { $0.scheduledMs >= 1000 && $0.scheduledMs < 2000 }
        #expect(during.count == 100)
        #expect(during.first!.latencyMs >= 999)
        #expect(during.allSatisfy { $0.latencyMs >= 100 })

        // The corrected distribution says a third of the requests were slow; the naive one hides
        // the stall behind a single sample (its p99 is the server's 1 ms).
        let correctedP90 = outcome.corrected.latency.valueAtPercentile(90)
        let naiveP99 = outcome.naive.latency.valueAtPercentile(99)
        #expect(correctedP90 >= 700_000)
        #expect(naiveP99 <= 1_100)
        #expect(outcome.corrected.latency.max >= 1_000_000)
        #expect(outcome.naive.latency.max >= 1_000_000)  // the one request that hit the stall
    }

    @Test func latencyGrowsWithTimeWhenTheRateIsAboveCapacity() {
        // 1 slot, 10 ms per request (capacity 100/s), offered 200/s: each request waits longer.
        var queue = OpenLoopQueue(schedule: RequestSchedule(startNanos: 0, ratePerSecond: 200), endNanos: 2_000_000_000)
        var now: UInt64 = 0
        var latencies: [UInt64] = []
        while !queue.isFinished {
            queue.advance(to: now)
            guard let scheduled = queue.takeNext() else {
                now = queue.nextWakeup!
                continue
            }
            now += 10_000_000
            latencies.append(openLoopLatencyMicros(scheduledNanos: scheduled, completedNanos: now))
        }
        #expect(latencies.count == 400)
        #expect(zip(latencies, latencies.dropFirst()).allSatisfy { $0 <= $1 })
        #expect(latencies.last! > 1_900_000)  // the last of 400 waits for 399 × 10 ms − 2 s
    }
}
