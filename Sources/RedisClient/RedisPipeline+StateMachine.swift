import NIOCore

/// The commands in flight on one connection, oldest first, and the one timer that guards them
/// (STYLE habit 1: no I/O here; `RedisChannelHandler` performs the actions).
///
/// Redis answers in request order on a connection (RESP pipelining), so replies are matched to
/// commands by position alone. That is also why a timeout must close the connection: a reply
/// arriving late would be taken as the answer to the next command.
///
/// One timer instead of one per command: it is armed for the earliest deadline in flight. When it
/// fires at deadline D every command whose deadline is ≤ D has had no reply (replies come in order,
/// and a replied command has left the queue), so the connection times out; otherwise the timer is
/// re-armed for the new earliest deadline. The time is the timer's own deadline: no clock is read.
struct RedisPipelineStateMachine<Promise> {
    struct Pending {
        var promise: Promise
        var deadline: NIODeadline
    }

    private var pending = CircularBuffer<Pending>(initialCapacity: 16)
    private var armedDeadline: NIODeadline?
    private(set) var isClosed = false

    var inFlight: Int { pending.count }

    enum EnqueueAction: Equatable {
        /// Send the command; when a deadline is given, (re)arm the timer for it.
        case send(armTimer: NIODeadline?)
        /// The connection is closed: fail the promise.
        case fail
    }

    mutating func enqueue(_ promise: Promise, deadline: NIODeadline) -> EnqueueAction {
        guard !isClosed else { return .fail }
        pending.append(Pending(promise: promise, deadline: deadline))
        if let armed = armedDeadline, armed <= deadline { return .send(armTimer: nil) }
        armedDeadline = deadline
        return .send(armTimer: deadline)
    }

    enum ReplyAction {
        case succeed(Promise)
        /// A reply with no command waiting for it: the stream is out of step; close.
        case unexpectedReply
    }

    mutating func replyReceived() -> ReplyAction {
        guard let head = pending.popFirst() else { return .unexpectedReply }
        return .succeed(head.promise)
    }

    enum TimerAction {
        case none
        case rearm(NIODeadline)
        /// Fail all of these with a timeout and close the connection.
        case timedOut([Promise])
    }

    /// The timer armed for `deadline` fired. Timers replaced by an earlier one are ignored.
    mutating func timerFired(deadline: NIODeadline) -> TimerAction {
        guard armedDeadline == deadline else { return .none }
        armedDeadline = nil
        guard !isClosed else { return .none }
        var earliest: NIODeadline?
        for p in pending {
            if p.deadline <= deadline { return .timedOut(close()) }
            if earliest.map({ p.deadline < $0 }) ?? true { earliest = p.deadline }
        }
        guard let earliest else { return .none }
        armedDeadline = earliest
        return .rearm(earliest)
    }

    /// Closes the pipeline; returns every promise still waiting, oldest first.
    mutating func close() -> [Promise] {
        isClosed = true
        armedDeadline = nil
        let all = pending.map(\.promise)
        pending.removeAll()
        return all
    }
}
