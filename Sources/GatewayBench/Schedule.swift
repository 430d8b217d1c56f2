/// When each request of a fixed-rate run is due. Pure arithmetic on nanosecond timestamps of a
/// monotonic clock, so it is tested without sockets or sleeping.
///
/// Request `k` of this schedule is due at `start + offset + k / rate`, computed from `k` each
/// time (never by adding up intervals, which would drift over millions of requests).
struct RequestSchedule: Equatable {
    let startNanos: UInt64
    let ratePerSecond: Double
    let offsetNanos: UInt64

    init(startNanos: UInt64, ratePerSecond: Double, offsetNanos: UInt64 = 0) {
        precondition(ratePerSecond > 0)
        self.startNanos = startNanos
        self.ratePerSecond = ratePerSecond
        self.offsetNanos = offsetNanos
    }

    func sendTime(_ index: Int) -> UInt64 {
        self.startNanos + self.offsetNanos + UInt64((Double(index) * 1e9 / self.ratePerSecond).rounded())
    }

    /// How many requests are due strictly before `endNanos`.
    func count(before endNanos: UInt64) -> Int {
        let first = self.startNanos + self.offsetNanos
        guard endNanos > first else { return 0 }
        var count = Int((Double(endNanos - first) * self.ratePerSecond / 1e9).rounded(.up))
        // Correct the floating-point edge either way so that sendTime(count - 1) < end <= sendTime(count).
        while count > 0 && self.sendTime(count - 1) >= endNanos { count -= 1 }
        while self.sendTime(count) < endNanos { count += 1 }
        return count
    }

    /// Splits a total rate over event loops in proportion to their connections; loop `l`'s
    /// requests are offset by `l / rate` so the loops interleave instead of firing together.
    static func perLoop(startNanos: UInt64, totalRate: Double, connectionsPerLoop: [Int]) -> [RequestSchedule] {
        let total = connectionsPerLoop.reduce(0, +)
        return connectionsPerLoop.enumerated().map { index, connections in
            RequestSchedule(
                startNanos: startNanos,
                ratePerSecond: totalRate * Double(connections) / Double(max(1, total)),
                offsetNanos: UInt64((Double(index) * 1e9 / totalRate).rounded())
            )
        }
    }
}

/// One stage of a run: a fixed rate held for a while (`ramp: [{rate: 1000, for: 30s}, ...]`).
public struct BenchStage: Sendable, Equatable {
    public var rate: Double
    public var durationNanos: UInt64

    public init(rate: Double, durationNanos: UInt64) {
        self.rate = rate
        self.durationNanos = durationNanos
    }
}

/// A schedule made of consecutive stages, each a `RequestSchedule` of its own rate that ends where
/// the next begins. Request indices run on across stages; `stage(of:)` says which stage a request
/// belongs to (the first may be the unrecorded warm-up).
struct StagedSchedule: Equatable {
    struct Segment: Equatable {
        let schedule: RequestSchedule
        /// Index of this segment's first request in the whole schedule.
        let first: Int
        let count: Int
    }

    let segments: [Segment]
    var total: Int { self.segments.last.map { $0.first + $0.count } ?? 0 }

    init(_ parts: [(schedule: RequestSchedule, endNanos: UInt64)]) {
        var first = 0
        var segments: [Segment] = []
        for part in parts {
            let count = part.schedule.count(before: part.endNanos)
            segments.append(Segment(schedule: part.schedule, first: first, count: count))
            first += count
        }
        self.segments = segments
    }

    /// Index of the segment holding request `index` (the last one past the end).
    func stage(of index: Int) -> Int {
        for (position, segment) in self.segments.enumerated() where index < segment.first + segment.count { return position }
        return max(0, self.segments.count - 1)
    }

    func sendTime(_ index: Int) -> UInt64 {
        let segment = self.segments[self.stage(of: index)]
        return segment.schedule.sendTime(index - segment.first)
    }

    /// Each loop's staged schedule: every stage's rate split by connections as `RequestSchedule.perLoop`.
    static func perLoop(startNanos: UInt64, stages: [BenchStage], connectionsPerLoop: [Int]) -> [StagedSchedule] {
        var perLoop: [[(schedule: RequestSchedule, endNanos: UInt64)]] = Array(repeating: [], count: connectionsPerLoop.count)
        var stageStart = startNanos
        for stage in stages {
            let stageEnd = stageStart + stage.durationNanos
            let parts = RequestSchedule.perLoop(startNanos: stageStart, totalRate: stage.rate, connectionsPerLoop: connectionsPerLoop)
            for (loop, part) in parts.enumerated() { perLoop[loop].append((part, stageEnd)) }
            stageStart = stageEnd
        }
        return perLoop.map(StagedSchedule.init)
    }
}

/// Open-loop bookkeeping for one event loop: which scheduled requests are due, which of those are
/// still waiting for a free connection slot, and when to wake up next. Requests that wait keep
/// their scheduled time, so the wait counts in their latency (the coordinated-omission correction
/// wrk2 made known: a stalled server shows as queueing latency, not as fewer samples).
struct OpenLoopQueue {
    let schedule: StagedSchedule
    /// Index of the first request not scheduled any more (due at or after the end of the run).
    let total: Int
    /// First index not yet due.
    private(set) var nextDue = 0
    /// First index not yet sent: `nextSend..<nextDue` are due and waiting for a slot.
    private(set) var nextSend = 0

    init(schedule: StagedSchedule) {
        self.schedule = schedule
        self.total = schedule.total
    }

    /// A single-rate schedule ending at `endNanos`.
    init(schedule: RequestSchedule, endNanos: UInt64) {
        self.init(schedule: StagedSchedule([(schedule, endNanos)]))
    }

    var waiting: Int { self.nextDue - self.nextSend }
    var sent: Int { self.nextSend }
    /// Everything scheduled has been sent.
    var isFinished: Bool { self.nextSend >= self.total }

    /// Marks every request scheduled at or before `now` as due.
    mutating func advance(to now: UInt64) {
        while self.nextDue < self.total && self.schedule.sendTime(self.nextDue) <= now {
            self.nextDue += 1
        }
    }

    /// The scheduled time of the oldest waiting request, now taken for sending.
    mutating func takeNext() -> UInt64? {
        self.takeNextWithStage()?.scheduled
    }

    /// As `takeNext`, with the stage the request belongs to.
    mutating func takeNextWithStage() -> (scheduled: UInt64, stage: Int)? {
        guard self.nextSend < self.nextDue else { return nil }
        defer { self.nextSend += 1 }
        return (self.schedule.sendTime(self.nextSend), self.schedule.stage(of: self.nextSend))
    }

    /// When the next not-yet-due request becomes due; nil once all are due.
    var nextWakeup: UInt64? {
        self.nextDue < self.total ? self.schedule.sendTime(self.nextDue) : nil
    }
}

/// Open-loop latency: from when the request was due, not from when a slot let it go out.
@inline(__always)
func openLoopLatencyMicros(scheduledNanos: UInt64, completedNanos: UInt64) -> UInt64 {
    completedNanos > scheduledNanos ? (completedNanos - scheduledNanos) / 1000 : 0
}
