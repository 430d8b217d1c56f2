import NIOCore

/// The commands in flight on one connection, oldest first, and the one timer that guards them
/// (STYLE habit 1: no I/O here; `RedisChannelHandler` performs the actions).
///
/// Redis answers in request order on a connection (RESP pipelining), so replies are matched to
/// commands by position alone. That is also why a timeout must close the connection: a reply
/// arriving late would be taken as the answer to the next command.
///
/// A command may also carry a caller's deadline (`replyBy`, the rate limiter's strict one): when it
/// passes, the caller is failed but the command stays in line, so its late reply is still matched
/// by position and dropped, and the connection lives on. That costs no timer of the caller's own.
///
/// One timer instead of one per command: it is armed for the earliest deadline in flight. When it
/// fires at deadline D every command whose deadline is ≤ D has had no reply (replies come in order,
/// and a replied command has left the queue), so the connection times out; callers whose `replyBy`
/// is ≤ D are let go; otherwise the timer is re-armed for the new earliest deadline. It is re-armed
/// early only when a new command's deadline is earlier than the armed one (HAProxy's rule). The
/// time is the timer's own deadline: no clock is read.
struct RedisPipelineStateMachine<Promise> {
    struct Pending {
        /// Nil once the caller was let go at `replyBy`: the reply is still awaited, then dropped.
        var promise: Promise?
        var deadline: NIODeadline
        var replyBy: NIODeadline?

        /// When the timer next matters for this command.
        var due: NIODeadline {
            guard self.promise != nil, let replyBy = self.replyBy else { return self.deadline }
            return min(replyBy, self.deadline)
        }
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

    mutating func enqueue(_ promise: Promise, deadline: NIODeadline, replyBy: NIODeadline? = nil) -> EnqueueAction {
        guard !isClosed else { return .fail }
        let command = Pending(promise: promise, deadline: deadline, replyBy: replyBy)
        pending.append(command)
        if let armed = armedDeadline, armed <= command.due { return .send(armTimer: nil) }
        armedDeadline = command.due
        return .send(armTimer: command.due)
    }

    enum ReplyAction {
        case succeed(Promise)
        /// The reply of a command whose caller was let go at its `replyBy`.
        case dropLate
        /// A reply with no command waiting for it: the stream is out of step; close.
        case unexpectedReply
    }

    mutating func replyReceived() -> ReplyAction {
        guard let head = pending.popFirst() else { return .unexpectedReply }
        guard let promise = head.promise else { return .dropLate }
        return .succeed(promise)
    }

    enum TimerAction {
        case none
        case rearm(NIODeadline)
        /// Fail these callers (their `replyBy` passed); re-arm for the deadline when given.
        case letGo([Promise], rearm: NIODeadline?)
        /// Fail all of these with a timeout and close the connection.
        case timedOut([Promise])
    }

    /// The timer armed for `deadline` fired. Timers replaced by an earlier one are ignored.
    mutating func timerFired(deadline: NIODeadline) -> TimerAction {
        guard armedDeadline == deadline else { return .none }
        armedDeadline = nil
        guard !isClosed else { return .none }
        var lateCallers: [Promise] = []
        var earliest: NIODeadline?
        for index in pending.indices {
            if pending[index].deadline <= deadline { return .timedOut(close()) }
            if let promise = pending[index].promise, let replyBy = pending[index].replyBy, replyBy <= deadline {
                lateCallers.append(promise)
                pending[index].promise = nil
            }
            let due = pending[index].due
            if earliest.map({ due < $0 }) ?? true { earliest = due }
        }
        armedDeadline = earliest
        if !lateCallers.isEmpty { return .letGo(lateCallers, rearm: earliest) }
        return earliest.map { .rearm($0) } ?? .none
    }

    /// Closes the pipeline; returns every caller still waiting, oldest first.
    mutating func close() -> [Promise] {
        isClosed = true
        armedDeadline = nil
        let all = pending.compactMap(\.promise)
        pending.removeAll()
        return all
    }
}
