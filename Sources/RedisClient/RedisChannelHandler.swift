import NIOCore

/// One command for a connection: its arguments, who waits for the reply, and how long they wait.
struct RedisRequest: Sendable {
    var arguments: [String]
    var promise: EventLoopPromise<RESPValue>
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

    private var state = RedisPipelineStateMachine<EventLoopPromise<RESPValue>>()
    private var parser: RESPParser?
    private var timer: Scheduled<Void>?

    init() {}

    func handlerAdded(context: ChannelHandlerContext) {
        parser = RESPParser()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        failAll(RedisError.connectionClosed)
        parser?.close()
        parser = nil
        timer?.cancel()
        timer = nil
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let batch = unwrapOutboundIn(data)
        let now = context.eventLoop.now
        var buffer = context.channel.allocator.buffer(capacity: 64 * batch.requests.count)
        for request in batch.requests {
            switch state.enqueue(request.promise, deadline: now + request.timeout, replyBy: request.replyBy) {
            case .fail:
                request.promise.fail(RedisError.connectionClosed)
            case .send(let arm):
                RESPEncoder.encode(request.arguments, into: &buffer)
                if let arm { armTimer(context: context, deadline: arm) }
            }
        }
        if buffer.readableBytes > 0 {
            context.write(wrapOutboundOut(buffer), promise: promise)
        } else {
            promise?.fail(RedisError.connectionClosed)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        guard let parser else { return }
        do {
            try parser.feed(bytes)
            while let value = try parser.next() {
                switch state.replyReceived() {
                case .succeed(let promise):
                    promise.succeed(value)
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
