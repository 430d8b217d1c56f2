import NIOCore

/// Server-side TLS over system OpenSSL: ciphertext `ByteBuffer`s on the socket side, plaintext
/// `ByteBuffer`s on the application side.
///
/// A thin I/O shell: decisions are made by ``TLSConnectionStateMachine``; OpenSSL calls go through
/// ``TLSConnection``. The handler feeds bytes, runs the calls the machine asks for, and after every
/// OpenSSL call writes whatever ciphertext it produced (handshake flights, tickets, alerts).
///
/// Ordering guarantee: the application protocol's handlers are installed (`installProtocol`) and
/// ``TLSHandshakeCompleted`` is fired before any decrypted byte is passed on, in the same call
/// stack, because with TLS 1.3 the client's Finished and its first request often arrive in one
/// read.
final class TLSServerHandler: ChannelDuplexHandler, RemovableChannelHandler, LoopTimerOwner {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// How long to wait for the peer's close_notify after sending ours (a peer need not answer).
    static let closeNotifyTimeout = TimeAmount.seconds(1)

    private let tlsContext: TLSServerContext
    /// This loop's iteration stamp (`gateway_event_loop_tick_seconds`); made on the loop that runs
    /// the handler.
    private let tickSlot = EventLoopTicks.currentSlot()
    private let handshakeTimeout: TimeAmount
    private var stateMachine = TLSConnectionStateMachine()
    /// Created in `handlerAdded`, freed (with its `SSL*`) in `handlerRemoved`.
    private var connection: TLSConnection?
    /// The loop's timers (handshake, close_notify and flush waits).
    private let timers: LoopTimers
    /// Set while the handler is in a pipeline, for the timers' callbacks.
    private var context: ChannelHandlerContext?
    private var handshakeTimer: LoopTimers.Timer?
    /// Waiting for the peer's close_notify.
    private var closeTimer: LoopTimers.Timer?
    /// Bounding `closeAfterPendingWrites`.
    private var flushTimer: LoopTimers.Timer?
    /// Where `SSL_read` decrypts to, kept for the connection's life: a buffer passed on and released
    /// by the next handler is cleared in place; one the next handler still holds is left to it (the
    /// next `clear()` gets fresh storage), so reuse never overwrites bytes someone else can see.
    private var plaintextBuffer: ByteBuffer?
    /// True while the read loop runs, so a re-entrant channelRead only feeds the BIO.
    private var isDecrypting = false
    /// Set once this handler has closed the channel itself, so it closes only once.
    private var closeIssued = false

    /// Adds the handlers of the protocol ALPN chose, after this one. Done here rather than by a
    /// handler that waits for the handshake and then removes itself: that was a handler added and
    /// removed, with their pipeline walks, on every connection.
    typealias ProtocolInstaller = (TLSHandshakeCompleted, ChannelPipeline.SynchronousOperations) throws -> Void
    private let installProtocol: ProtocolInstaller?

    init(context: TLSServerContext, handshakeTimeout: TimeAmount, timers: LoopTimers, installProtocol: ProtocolInstaller? = nil) {
        self.tlsContext = context
        self.handshakeTimeout = handshakeTimeout
        self.timers = timers
        self.installProtocol = installProtocol
    }

    // MARK: Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        do {
            self.connection = try TLSConnection(context: self.tlsContext, allocator: context.channel.allocator)
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        if context.channel.isActive {
            self.start(context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.cancelTimers()
        self.context = nil
        let promises = self.stateMachine.handlerRemoved()
        promises.forEach { $0.fail(ChannelError.ioOnClosedChannel) }
        self.connection = nil  // SSL_free
        self.plaintextBuffer = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancelTimers()
        switch self.stateMachine.channelInactive() {
        case .cleanUp(let error, let failedWrites, let closePromises):
            failedWrites.forEach { $0.fail(ChannelError.ioOnClosedChannel) }
            closePromises.forEach { $0.succeed() }
            if let error { context.fireErrorCaught(error) }
        }
        context.fireChannelInactive()
    }

    private func start(context: ChannelHandlerContext) {
        guard case .startHandshake = self.stateMachine.channelActive() else { return }
        self.handshakeTimer = self.timers.arm(self, in: self.handshakeTimeout)
        // A server speaks second, but stepping once puts OpenSSL in the accept state consistently.
        self.stepHandshake(context: context)
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.tickSlot.ioBegins()
        let ciphertext = self.unwrapInboundIn(data)
        guard let connection = self.connection else { return }
        switch self.stateMachine.ciphertextReceived() {
        case .discard:
            return
        case .continueHandshake:
            connection.feed(ciphertext)
            self.stepHandshake(context: context)
            connection.keepUnreadInput()
        case .decrypt:
            connection.feed(ciphertext)
            self.decrypt(context: context)
            connection.keepUnreadInput()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            // EOF on a half-closable channel: without close_notify this is an unclean shutdown.
            self.runTerminate(self.stateMachine.inputClosed(), context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func stepHandshake(context: ChannelHandlerContext) {
        guard let connection = self.connection else { return }
        let result = connection.doHandshake()
        self.writeOutput(context: context)
        switch self.stateMachine.handshakeStepped(result) {
        case .wait:
            break
        case .completed(let buffered):
            self.timers.disarm(&self.handshakeTimer)
            if let buffered { self.encrypt(buffered, context: context) }
            let summary = connection.handshakeSummary
            if let installProtocol = self.installProtocol {
                do {
                    try installProtocol(summary, context.pipeline.syncOperations)
                } catch {
                    context.close(promise: nil)
                    return
                }
            }
            context.fireUserInboundEventTriggered(summary)
            // Application data that arrived with the client's Finished.
            self.decrypt(context: context)
        case .fail(let error, let promises):
            self.failAndClose(error: error, promises: promises, context: context)
        }
    }

    /// Runs SSL_read while OpenSSL has input, passing the decrypted bytes on: records decrypted in
    /// one go are gathered into one buffer (up to a record's size) and passed on together.
    private func decrypt(context: ChannelHandlerContext) {
        guard !self.isDecrypting else { return }  // the running loop will pick up the new bytes
        self.isDecrypting = true
        var plaintext = self.plaintextBuffer ?? context.channel.allocator.buffer(capacity: TLSConnection.readChunkSize)
        self.plaintextBuffer = nil  // the local copy must be the only reference, or writing copies
        defer {
            // Whatever was not passed on by now belongs to a connection that stopped reading.
            plaintext.moveReaderIndex(to: plaintext.writerIndex)
            self.plaintextBuffer = plaintext
            self.isDecrypting = false
        }
        while let connection = self.connection {
            if plaintext.readableBytes == 0 {
                plaintext.clear()
            } else if plaintext.writableBytes == 0 {
                self.deliver(&plaintext, context: context)
                continue
            }
            let result = connection.read(into: &plaintext)
            self.writeOutput(context: context)
            if result != .data, plaintext.readableBytes > 0 {
                // Bytes decrypted before this result go first (data before close_notify or an error).
                self.deliver(&plaintext, context: context)
            }
            switch self.stateMachine.readStepped(result) {
            case .deliver:
                // Without buffered input a second SSL_read would only report "want read".
                guard !connection.hasBufferedInput else { continue }
                self.deliver(&plaintext, context: context)
                // Checked again: a re-entrant channelRead during delivery only fed the BIO.
                if !connection.hasBufferedInput { return }
            case .discardAndContinue:
                plaintext.moveReaderIndex(to: plaintext.writerIndex)
                if !connection.hasBufferedInput { return }
            case .stop:
                return
            case .answerCloseNotifyAndClose(let promises):
                promises.forEach { $0.fail(ChannelError.ioOnClosedChannel) }
                _ = connection.shutdown()
                self.writeOutput(context: context)
                self.closeAfterPendingWrites(context: context)
                return
            case .closeChannel(let promises):
                self.cancelTimers()
                self.closeChannel(promises: promises, context: context)
                return
            case .fail(let error, let promises):
                self.failAndClose(error: error, promises: promises, context: context)
                return
            }
        }
    }

    /// Passes the readable bytes on and marks them consumed in the kept copy.
    private func deliver(_ plaintext: inout ByteBuffer, context: ChannelHandlerContext) {
        context.fireChannelRead(self.wrapInboundOut(plaintext))
        plaintext.moveReaderIndex(to: plaintext.writerIndex)
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch self.stateMachine.write(self.unwrapOutboundIn(data), promise: promise) {
        case .buffered:
            break
        case .failWrite(let promise, let error):
            promise?.fail(error)
        }
    }

    func flush(context: ChannelHandlerContext) {
        switch self.stateMachine.flush() {
        case .none:
            break
        case .encrypt(let batch):
            self.encrypt(batch, context: context)
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch self.stateMachine.close(mode: mode, promise: promise) {
        case .forward(let promise):
            context.close(mode: mode, promise: promise)
        case .chain:
            break
        case .closeChannel(let promise, let failedWrites):
            self.cancelTimers()
            failedWrites.forEach { $0.fail(ChannelError.ioOnClosedChannel) }
            context.close(promise: promise)
        case .sendCloseNotify(let failedWrites):
            failedWrites.forEach { $0.fail(ChannelError.ioOnClosedChannel) }
            self.sendCloseNotify(context: context)
        }
    }

    /// RFC 8446 §6.1: send close_notify, then wait at most ``closeNotifyTimeout`` for the peer's.
    private func sendCloseNotify(context: ChannelHandlerContext) {
        guard let connection = self.connection else {
            self.runTerminate(self.stateMachine.closeNotifyCannotBeAwaited(), context: context)
            return
        }
        let result = connection.shutdown()
        self.writeOutput(context: context)
        switch result {
        case .sent:
            self.closeTimer = self.timers.arm(self, in: Self.closeNotifyTimeout)
        case .complete, .failed:
            self.runTerminate(self.stateMachine.closeNotifyCannotBeAwaited(), context: context)
        }
    }

    /// One SSL_write for the whole batch, then one socket write whose completion completes every
    /// application promise in the batch.
    private func encrypt(_ batch: TLSConnectionStateMachine.EncryptBatch, context: ChannelHandlerContext) {
        guard let connection = self.connection else {
            batch.promises.forEach { $0.fail(ChannelError.ioOnClosedChannel) }
            return
        }
        if batch.plaintext.readableBytes > 0, case .failed(let error) = connection.write(batch.plaintext) {
            self.writeOutput(context: context)
            self.runTerminate(self.stateMachine.encryptionFailed(error, promises: batch.promises), context: context)
            return
        }
        self.stateMachine.encrypted(batch)
        // Even with no ciphertext the write goes out, so its promise completes in order.
        self.writeOutput(context: context, promise: Self.combine(batch.promises, eventLoop: context.eventLoop), always: true)
    }

    private static func combine(_ promises: [EventLoopPromise<Void>], eventLoop: any EventLoop) -> EventLoopPromise<Void>? {
        switch promises.count {
        case 0: return nil
        case 1: return promises[0]
        default:
            let combined = eventLoop.makePromise(of: Void.self)
            for promise in promises { combined.futureResult.cascade(to: promise) }
            return combined
        }
    }

    // MARK: Helpers

    /// Sends whatever the last OpenSSL call produced (if nothing, writes only when `always`).
    private func writeOutput(context: ChannelHandlerContext, promise: EventLoopPromise<Void>? = nil, always: Bool = false) {
        guard let connection = self.connection else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard always || connection.hasOutput else { return }
        context.writeAndFlush(self.wrapOutboundOut(connection.takeOutput()), promise: promise)
    }

    private func runTerminate(_ action: TLSConnectionStateMachine.TerminateAction, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .fail(let error, let promises):
            if let error {
                self.failAndClose(error: error, promises: promises, context: context)
            } else {
                promises.forEach { $0.fail(ChannelError.ioOnClosedChannel) }
            }
        case .closeChannel(let promises):
            self.cancelTimers()
            self.closeChannel(promises: promises, context: context)
        }
    }

    /// Alert bytes were already written by `writeOutput`; report the error, then close once they are out.
    private func failAndClose(error: TLSError, promises: [EventLoopPromise<Void>], context: ChannelHandlerContext) {
        self.cancelTimers()
        promises.forEach { $0.fail(error) }
        context.fireErrorCaught(error)
        self.closeAfterPendingWrites(context: context)
    }

    /// Closes once everything written so far (an alert, our close_notify, the response before it) has
    /// reached the socket, because closing a NIO channel drops writes still pending. An empty write is
    /// the barrier: NIO completes write promises in order. Bounded by ``closeNotifyTimeout`` so a
    /// peer that stops reading cannot hold the connection open.
    private func closeAfterPendingWrites(context: ChannelHandlerContext) {
        guard !self.closeIssued else { return }
        self.closeIssued = true
        let barrier = context.eventLoop.makePromise(of: Void.self)
        self.flushTimer = self.timers.arm(self, in: Self.closeNotifyTimeout)
        barrier.futureResult.assumeIsolated().whenComplete { _ in
            self.timers.disarm(&self.flushTimer)
            context.close(promise: nil)
        }
        context.writeAndFlush(self.wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: barrier)
    }

    private func closeChannel(promises: [EventLoopPromise<Void>], context: ChannelHandlerContext) {
        context.close(promise: Self.combine(promises, eventLoop: context.eventLoop))
    }

    private func cancelTimers() {
        self.timers.disarm(&self.handshakeTimer)
        self.timers.disarm(&self.closeTimer)
        self.timers.disarm(&self.flushTimer)
    }

    func timerFired(_ timer: LoopTimers.Timer, tag: NIODeadline) {
        guard let context = self.context else { return }
        switch timer {
        case self.handshakeTimer:
            self.handshakeTimer = nil
            self.runTerminate(self.stateMachine.handshakeTimedOut(), context: context)
        case self.closeTimer:
            self.closeTimer = nil
            self.runTerminate(self.stateMachine.closeTimedOut(), context: context)
        case self.flushTimer:
            self.flushTimer = nil
            context.close(promise: nil)
        default:
            break
        }
    }
}

@available(*, unavailable)
extension TLSServerHandler: Sendable {}
