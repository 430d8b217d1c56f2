import NIOCore
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#endif

/// What an upstream connection reports to the exchange currently using it. All calls happen on the
/// connection's event loop, which is also the client connection's loop.
protocol UpstreamConnectionOwner: AnyObject {
    func upstreamReceived(_ part: HTTPClientResponsePart)
    func upstreamFailed(_ error: Error)
    func upstreamClosed()
    func upstreamReadComplete()
    func upstreamWritabilityChanged(isWritable: Bool)
    /// `response_timeout` passed without a response head.
    func upstreamResponseTimedOut()
}

/// The last handler of a pooled upstream channel (after the NIO HTTP/1 client codec). It forwards
/// response parts to its owner and holds back socket reads while the client is slow to read
/// (backpressure: a slow downloader must not make the gateway buffer the whole response).
final class UpstreamConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    /// Strong, not weak: a weak reference gives every exchange a side table and slows each of its
    /// retains. Released explicitly: the pool clears it on release, and closing or an error clears it.
    var owner: UpstreamConnectionOwner?
    /// Called once, with this handler, when the channel goes inactive, so the pool forgets the
    /// connection.
    var onClose: ((UpstreamConnectionHandler) -> Void)?
    private var readGate = ReadGate()
    /// This loop's iteration stamp (`gateway_event_loop_tick_seconds`); made on the loop that runs
    /// the handler.
    private let tickSlot = EventLoopTicks.currentSlot()
    private var context: ChannelHandlerContext?
    /// The codec's encoder, asked whether a request's `.end` writes anything.
    var requestEncoder: HTTP1RequestEncoder?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.tickSlot.ioBegins()
        let part = Self.unwrapInboundIn(data)
        if let owner = self.owner {
            owner.upstreamReceived(part)
        } else {
            // Bytes on an idle pooled connection: the upstream is out of sync. Never reuse it.
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.owner?.upstreamReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let owner = self.owner
        self.owner = nil
        owner?.upstreamFailed(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let owner = self.owner
        self.owner = nil
        owner?.upstreamClosed()
        let onClose = self.onClose
        self.onClose = nil
        onClose?(self)
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.owner?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        self.readGate.read(context)
    }

    /// Writes from the tail of the pipeline without a trip through `Channel.write`.
    func send(_ part: HTTPClientRequestPart, flush: Bool, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        // The end of a request framed by Content-Length (or bodiless) is no bytes: skipping it saves
        // boxing the part and a trip through the codec for nothing.
        if case .end(nil) = part, promise == nil, let encoder = self.requestEncoder, !encoder.endWritesBytes {
            if flush { context.flush() }
            return
        }
        context.write(Self.wrapOutboundOut(part), promise: promise)
        if flush { context.flush() }
    }

    /// Sends a request head; a forwarded one is written by the encoder from the client's head.
    func send(_ head: UpstreamRequestHead, flush: Bool) {
        switch head {
        case .forwarded(let forwarded):
            guard let encoder = self.requestEncoder else { return self.send(.head(forwarded.head), flush: flush, promise: nil) }
            encoder.forwardedHead = forwarded
            self.send(.head(forwarded.client), flush: flush, promise: nil)
            // A closed channel fails the write before the encoder sees it: nothing is left behind.
            encoder.forwardedHead = nil
        case .rewritten(let head):
            self.send(.head(head), flush: flush, promise: nil)
        }
    }

    func pauseReads() { self.readGate.pause() }

    func resumeReads() { self.readGate.resume(self.context) }
}

/// A keep-alive connection to one upstream endpoint, owned by the pool of one event loop.
/// `@unchecked Sendable` only so futures can carry it: it is created, used and released on its
/// channel's event loop and never touched elsewhere.
final class UpstreamConnection: DeadlineTimerOwner, @unchecked Sendable {
    let channel: Channel
    let handler: UpstreamConnectionHandler
    let endpoint: UpstreamEndpoint
    /// True once the connection served a request: a failure before any response byte on a reused
    /// connection may just be the upstream closing an idle connection, so the request may be sent
    /// again if none of it was written or it is idempotent.
    var hasServedRequests = false
    /// Idle in the pool (`idle_timeout`) or awaiting a response head (`response_timeout`): the
    /// connection outlives its requests, so one armed check serves all of them.
    private var timer = DeadlineTimer()
    private var timerKind = TimerKind.idleInPool
    private enum TimerKind { case idleInPool, awaitingResponse }

    /// A socket has a TCP state to read (in-memory test channels do not); cast once, not per request.
    private let isSocket: Bool

    init(channel: Channel, handler: UpstreamConnectionHandler, endpoint: UpstreamEndpoint) {
        self.channel = channel
        self.isSocket = channel is SocketOptionProvider
        self.handler = handler
        self.endpoint = endpoint
    }

    func write(_ part: HTTPClientRequestPart, flush: Bool, promise: EventLoopPromise<Void>? = nil) {
        self.handler.send(part, flush: flush, promise: promise)
    }

    func writeHead(_ head: UpstreamRequestHead, flush: Bool) {
        self.handler.send(head, flush: flush)
    }

    /// False once the channel closed, and also (on Linux) once the upstream's FIN has arrived but
    /// the event loop has not read it yet: when the upstream closes an idle connection in the same
    /// loop iteration that a request picks it, the request must not be written to it.
    var isOpenBothWays: Bool {
        guard self.channel.isActive else { return false }
        #if os(Linux)
        // Read synchronously on the channel's loop (`getTCPInfo` would cost a future and a
        // callback per request). Only `tcpi_state`, the first byte of `struct tcp_info`, is
        // needed, and Linux fills a shorter buffer than the struct with its prefix.
        guard self.isSocket, let options = self.channel.syncOptions,
            let prefix = try? options.getOption(ChannelOptions.Types.SocketOption(level: .tcp, name: .tcp_info))
        else { return true }
        let state = withUnsafeBytes(of: prefix) { $0[0] }
        return state == UInt8(TCP_ESTABLISHED)
        #else
        return true
        #endif
    }

    func close() {
        self.handler.owner = nil
        self.timer.cancel()
        self.channel.close(promise: nil)
    }

    /// Closed after `settings.idleTimeout` unless taken out of the pool first.
    func expireWhenIdle(_ settings: UpstreamSettings) {
        self.arm(.idleInPool, after: settings.idleTimeout, settings: settings)
    }

    /// The owner hears `upstreamResponseTimedOut` after `settings.responseTimeout` unless
    /// `clearDeadline` comes first.
    func expectResponse(_ settings: UpstreamSettings) {
        self.arm(.awaitingResponse, after: settings.responseTimeout, settings: settings)
    }

    func clearDeadline() { self.timer.clear() }

    private func arm(_ kind: TimerKind, after delay: TimeAmount, settings: UpstreamSettings) {
        let now = NIODeadline.now()
        self.timerKind = kind
        self.horizon = min(settings.idleTimeout, settings.responseTimeout)
        self.timer.set(now + delay, now: now, horizon: self.horizon, loop: self.channel.eventLoop, owner: self)
    }

    /// The shortest delay `arm` is given, from the settings last used.
    private var horizon = TimeAmount.seconds(1)

    func deadlineCheck(scheduledFor target: NIODeadline) {
        guard self.timer.isDue(checkScheduledFor: target, horizon: self.horizon, loop: self.channel.eventLoop, owner: self) else {
            return
        }
        switch self.timerKind {
        case .idleInPool: self.close()
        case .awaitingResponse: self.handler.owner?.upstreamResponseTimedOut()
        }
    }
}
