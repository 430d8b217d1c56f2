import Testing
@testable import GatewayBench

@Suite struct ScheduleTests {
    let second: UInt64 = 1_000_000_000

    @Test func sendTimesFollowTheRate() {
        let start: UInt64 = 5 * second
        let schedule = RequestSchedule(startNanos: start, ratePerSecond: 1000)
        #expect(schedule.sendTime(0) == start)
        #expect(schedule.sendTime(1) == start + 1_000_000)
        #expect(schedule.sendTime(999) == start + 999_000_000)
        #expect(schedule.sendTime(1000) == start + second)
        #expect(schedule.count(before: start + second) == 1000)
        #expect(schedule.count(before: start + second + 1) == 1001)
        #expect(schedule.count(before: start) == 0)
    }

    @Test func sendTimesDoNotDriftOverLongRuns() {
        // 3/s does not divide a second evenly: computing each time from the index keeps request
        // 3 million exactly a million seconds after the start.
        let schedule = RequestSchedule(startNanos: 0, ratePerSecond: 3)
        #expect(schedule.sendTime(1) == 333_333_333)
        #expect(schedule.sendTime(2) == 666_666_667)
        #expect(schedule.sendTime(3_000_000) == 1_000_000 * second)
        #expect(schedule.count(before: 10 * second) == 30)
    }

    @Test func rateIsSplitOverLoopsByConnections() {
        let start: UInt64 = second
        let parts = RequestSchedule.perLoop(startNanos: start, totalRate: 300, connectionsPerLoop: [2, 1])
        #expect(parts.map(\.ratePerSecond) == [200, 100])
        #expect(parts[0].offsetNanos == 0)
        #expect(parts[1].offsetNanos == 3_333_333)  // interleaved, not firing together
        let end = start + 2 * second
        let total = parts.reduce(0) { $0 + $1.count(before: end) }
        #expect(total == 600)
        // Together they are evenly spread: no two requests due at the same instant.
        let times = parts.flatMap { part in (0..<part.count(before: end)).map(part.sendTime) }
        #expect(Set(times).count == times.count)
    }

    @Test func queueReleasesRequestsWhenDueAndKeepsTheirScheduledTimes() {
        let schedule = RequestSchedule(startNanos: 1000, ratePerSecond: 1_000_000)  // one per µs
        var queue = OpenLoopQueue(schedule: schedule, endNanos: 1000 + 10_000)
        #expect(queue.total == 10)
        #expect(queue.nextWakeup == 1000)
        queue.advance(to: 999)
        #expect(queue.waiting == 0)
        #expect(queue.takeNext() == nil)
        queue.advance(to: 3500)  // requests 0, 1, 2 are due (1000, 2000, 3000)
        #expect(queue.waiting == 3)
        #expect(queue.nextWakeup == 4000)
        #expect(queue.takeNext() == 1000)
        #expect(queue.waiting == 2)
        queue.advance(to: 100_000)
        #expect(queue.waiting == 9)
        #expect(queue.nextWakeup == nil)
        var taken: [UInt64] = []
        while let time = queue.takeNext() { taken.append(time) }
        #expect(taken == (1..<10).map { 1000 + UInt64($0) * 1000 })
        #expect(queue.isFinished)
    }

    @Test func latencyIsMeasuredFromTheScheduledTime() {
        // Due at 10 ms, sent at 30 ms (no free slot before), answered at 35 ms: 25 ms, not 5 ms.
        #expect(openLoopLatencyMicros(scheduledNanos: 10_000_000, completedNanos: 35_000_000) == 25_000)
        #expect(openLoopLatencyMicros(scheduledNanos: 10, completedNanos: 5) == 0)
    }

    @Test func parsesURLsDurationsAndRates() throws {
        let target = try BenchTarget(parsing: "https://127.0.0.1:8443/api/bookings?delay_ms=5")
        #expect(target == BenchTarget(tls: true, host: "127.0.0.1", port: 8443, path: "/api/bookings?delay_ms=5"))
        #expect(target.hostIsIPAddress)
        #expect(target.authority == "127.0.0.1:8443")
        let plain = try BenchTarget(parsing: "http://localhost")
        #expect(plain == BenchTarget(tls: false, host: "localhost", port: 80, path: "/"))
        #expect(plain.authority == "localhost" && !plain.hostIsIPAddress)
        let v6 = try BenchTarget(parsing: "https://[::1]:9443?x=1")
        #expect(v6 == BenchTarget(tls: true, host: "::1", port: 9443, path: "/?x=1"))
        #expect(v6.authority == "[::1]:9443")
        #expect(throws: BenchError.self) { try BenchTarget(parsing: "ftp://x") }
        #expect(throws: BenchError.self) { try BenchTarget(parsing: "http://x:99999/") }
        #expect(parseBenchDuration("30s") == 30 * second)
        #expect(parseBenchDuration("500ms") == 500_000_000)
        #expect(parseBenchDuration("2m") == 120 * second)
        #expect(parseBenchDuration("1.5") == 1_500_000_000)
        #expect(parseBenchDuration("-1s") == nil)
        #expect(parseBenchRate("2000/s") == 2000)
        #expect(parseBenchRate("0") == nil)
    }
}
