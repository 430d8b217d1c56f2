import NIOCore

/// Who is told a command's reply (or why none came), exactly once.
enum RedisReplyTarget: Sendable {
    case promise(EventLoopPromise<RESPValue>)
    /// Called on the connection's event loop, or at once by `send` when no connection takes the
    /// command. The rate limiter's per-request path: one closure, where a promise costs a future
    /// (its class metadata looked up at each allocation), its callback list and a closure per
    /// callback on it.
    case callback(@Sendable (Result<RESPValue, any Error>) -> Void)

    func succeed(_ value: RESPValue) {
        switch self {
        case .promise(let promise): promise.succeed(value)
        case .callback(let callback): callback(.success(value))
        }
    }

    func fail(_ error: any Error) {
        switch self {
        case .promise(let promise): promise.fail(error)
        case .callback(let callback): callback(.failure(error))
        }
    }
}

/// One command for a connection: its arguments, who waits for the reply, and how long they wait.
struct RedisRequest: Sendable {
    var arguments: [String]
    var reply: RedisReplyTarget
    var timeout: TimeAmount
    /// The caller's own deadline, shorter than `timeout`: past it the caller gets
    /// `RedisError.deadlineExceeded` while the connection waits on for the reply (and drops it).
    var replyBy: NIODeadline? = nil
}

/// Commands written together and flushed once (the pool batches everything queued in one
/// event-loop tick into one of these, so 128 commands in flight cost one `writev`, not 128).
struct RedisRequestBatch: Sendable {
    var requests: [RedisRequest]
}

/// The thin I/O half of a Redis connection: encodes commands, feeds received bytes to the hiredis
/// reader and completes promises in FIFO order, runs the timeout timer. Decisions are made by
/// `RedisPipelineStateMachine`.
final class RedisChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = RedisRequestBatch
    typealias OutboundOut = ByteBuffer

    private var state = RedisPipelineStateMachine<RedisReplyTarget>()
    private var parser: RESPParser?
    private var timer: Scheduled<Void>?
    /// Set while the handler is in a pipeline: `send` writes through it.
    private var context: ChannelHandlerContext?
    /// The buffer batches are encoded into, kept: once the socket has taken a batch's bytes the
    /// buffer is this handler's alone again and the next batch reuses its storage (a batch of
    /// sixteen commands or more needed a new kilobyte each time).
    private var outbound: ByteBuffer?
    private static let keptOutboundBytes = 64 << 10

    init() {}

    func handlerAdded(context: ChannelHandlerContext) {
        parser = RESPParser()
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.outbound = nil
        failAll(RedisError.connectionClosed)
        parser?.close()
        parser = nil
        timer?.cancel()
        timer = nil
    }

    /// Takes every request of the batch: each is either in flight (answered by a reply, a
    /// timeout or the connection's end) or failed here, so `promise` succeeds once the batch is
    /// taken. A failed socket write closes the channel, which fails what is in flight; failing
    /// the batch's promise too would tell a callback twice.
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        take(unwrapOutboundIn(data).requests, context: context)
        promise?.succeed()
    }

    /// A batch from the connection (`RedisConnection.drain`), on this handler's event loop: taken
    /// like one written through the pipeline, then flushed. Once the handler has left its
    /// pipeline (the connection closed), every request is failed instead.
    func send(_ requests: [RedisRequest]) {
        guard let context else {
            for request in requests { request.reply.fail(RedisError.connectionClosed) }
            return
        }
        take(requests, context: context)
        context.flush()
    }

    private func take(_ requests: [RedisRequest], context: ChannelHandlerContext) {
        let now = context.eventLoop.now
        var buffer = self.outbound.take() ?? context.channel.allocator.buffer(capacity: 64 * requests.count)
        buffer.clear()
        for request in requests {
            switch state.enqueue(request.reply, deadline: now + request.timeout, replyBy: request.replyBy) {
            case .fail:
                request.reply.fail(RedisError.connectionClosed)
            case .send(let arm):
                RESPEncoder.encode(request.arguments, into: &buffer)
                if let arm { armTimer(context: context, deadline: arm) }
            }
        }
        if buffer.readableBytes > 0 {
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
        if buffer.capacity <= Self.keptOutboundBytes { self.outbound = buffer }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        guard let parser else { return }
        do {
            try parser.feed(bytes)
            while let value = try parser.next() {
                switch state.replyReceived() {
                case .succeed(let reply):
                    reply.succeed(value)
                case .dropLate:
                    break
                case .unexpectedReply:
                    throw RedisError.protocolError.with("reply with no command in flight")
                }
            }
        } catch {
            failAll(error as? RedisError ?? RedisError.protocolError.with("\(error)"))
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(RedisError.connectionClosed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failAll(RedisError.connectionClosed.with("\(error)"))
        context.close(promise: nil)
    }

    private func armTimer(context: ChannelHandlerContext, deadline: NIODeadline) {
        timer?.cancel()
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            timerFired(context: context, deadline: deadline)
        }
    }

    private func timerFired(context: ChannelHandlerContext, deadline: NIODeadline) {
        switch state.timerFired(deadline: deadline) {
        case .none:
            break
        case .rearm(let next):
            armTimer(context: context, deadline: next)
        case .letGo(let callers, let next):
            if let next { armTimer(context: context, deadline: next) }
            for p in callers { p.fail(RedisError.deadlineExceeded) }
        case .timedOut(let promises):
            for p in promises { p.fail(RedisError.timeout) }
            context.close(promise: nil)
        }
    }

    private func failAll(_ error: RedisError) {
        for p in state.close() { p.fail(error) }
    }
}
