import NIOCore
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#endif

/// What an upstream connection reports to the exchange currently using it. All calls happen on the
/// connection's event loop, which is also the client connection's loop.
protocol UpstreamConnectionOwner: AnyObject {
    /// A final response head (interim 1xx responses are dropped). `keepAlive` is false when the
    /// upstream closes the connection after this response, or its body ends with the close.
    func upstreamReceivedHead(_ head: UpstreamResponseHead, keepAlive: Bool)
    func upstreamReceivedBody(_ body: ByteBuffer)
    func upstreamReceivedEnd()
    func upstreamFailed(_ error: Error)
    func upstreamClosed()
    func upstreamReadComplete()
    func upstreamWritabilityChanged(isWritable: Bool)
    /// `response_timeout` passed without a response head.
    func upstreamResponseTimedOut()
}

/// The only handler of a pooled upstream channel: it writes the requests (`KeptHeadFraming`),
/// reads the responses from the socket's bytes (`UpstreamResponseParser`) and hands them to its
/// owner, and holds back socket reads while the client is slow to read (backpressure: a slow
/// downloader must not make the gateway buffer the whole response). One handler instead of NIO's
/// client codec: no typed part crosses the pipeline, and the parser learns each request's method
/// from the write itself.
final class UpstreamConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    /// Strong, not weak: a weak reference gives every exchange a side table and slows each of its
    /// retains. Released explicitly: the pool clears it on release, and closing or an error clears it.
    var owner: UpstreamConnectionOwner? {
        didSet { self.ownerChanges &+= 1 }
    }
    /// Counts changes of `owner`, so that a read handing several events to one owner loads it once
    /// (a retain and a release) and still notices when a call gave the connection up.
    private var ownerChanges = 0
    /// The upstream sent more after a response than that response: bytes no request asked for
    /// (a second response, a body after a HEAD or 204's head). The connection is never reused: on
    /// it they would answer whichever request went next (response desync).
    private(set) var sentUnaskedBytes = false
    private var readGate = ReadGate()
    /// This loop's iteration stamp (`gateway_event_loop_tick_seconds`); made on the loop that runs
    /// the handler.
    let tickSlot = EventLoopTicks.currentSlot()
    private var context: ChannelHandlerContext?
    private var framing = KeptHeadFraming()
    private var parser = UpstreamResponseParser()
    /// Read bytes not yet parsed: the start of a head or chunk-size line split across reads, or,
    /// after a 101, the tunnelled protocol's first bytes.
    private var unparsed: ByteBuffer?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.tickSlot.ioBegins()
        var input = self.unwrapInboundIn(data)
        if var unparsed = self.unparsed.take() {
            unparsed.writeBuffer(&input)
            input = unparsed
        }
        var owner: UpstreamConnectionOwner?
        var ownerChanges = self.ownerChanges &- 1
        while true {
            let event: UpstreamResponseParser.Event?
            do {
                event = try self.parser.next(&input)
            } catch {
                return self.fail(context)
            }
            guard let event else { break }
            if ownerChanges != self.ownerChanges {
                owner = self.owner
                ownerChanges = self.ownerChanges
            }
            guard let owner else {
                // A response on an idle pooled connection: the upstream is out of sync. Never reuse it.
                context.close(promise: nil)
                return
            }
            // Consumed: a switch over the borrowed event copied the head out of it (a retain
            // per reference) and destroyed the event after.
            switch consume event {
            case .head(let head, let keepAlive):
                owner.upstreamReceivedHead(head, keepAlive: keepAlive)
            case .body(let body):
                owner.upstreamReceivedBody(body)
            case .end:
                if input.readableBytes > 0 {
                    if self.parser.hasSwitched {
                        // After a 101 the owner hands the connection to a tunnel, which takes the rest.
                        self.unparsed = input
                        input.clear()
                    } else {
                        // Seen before the owner lets go of the connection, which the pool then
                        // closes rather than hand to a request waiting for it.
                        self.sentUnaskedBytes = true
                    }
                }
                owner.upstreamReceivedEnd()
            }
        }
        if input.readableBytes > 0 { self.unparsed = input }
    }

    /// A response outside the strict grammar (or no response awaited): the owner answers 502, and
    /// the connection is never reused.
    private func fail(_ context: ChannelHandlerContext) {
        self.unparsed = nil
        let owner = self.owner
        self.owner = nil
        owner?.upstreamFailed(UpstreamProtocolError())
        context.close(promise: nil)
    }

    /// The bytes read after a 101, for the tunnel that takes the connection over.
    func takeSwitchedBytes() -> ByteBuffer? {
        guard self.parser.hasSwitched else { return nil }
        return self.unparsed.take()
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
        if let owner = self.owner {
            // A body delimited by the close ends here; a response cut short is a bad response.
            do {
                if try self.parser.inputEnded(bufferedBytes: self.unparsed?.readableBytes ?? 0) != nil {
                    owner.upstreamReceivedEnd()
                }
            } catch {
                self.owner = nil
                owner.upstreamFailed(UpstreamProtocolError())
            }
        }
        let owner = self.owner
        self.owner = nil
        owner?.upstreamClosed()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.owner?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        self.readGate.read(context)
    }

    /// Writes one request part straight to the socket's end of the pipeline.
    func send(_ part: HTTPClientRequestPart, flush: Bool, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        switch part {
        case .head(let head):
            self.parser.requestSent(method: head.method)
            self.framing.writeRequest(part, context: context, promise: promise)
        case .body(let body):
            self.framing.writeBody(body, context: context, promise: promise)
        case .end(let trailers):
            // The end of a request framed by Content-Length (or bodiless) is no bytes.
            if trailers != nil || promise != nil || self.framing.isChunked {
                self.framing.writeEnd(trailers, context: context, promise: promise)
            }
        }
        if flush { context.flush() }
    }

    /// Sends a request head; a forwarded one is written from the client's head.
    func send(_ head: UpstreamRequestHead, flush: Bool) {
        switch head {
        case .forwarded(let forwarded):
            guard let context else { return }
            self.parser.requestSent(method: forwarded.client.method)
            self.framing.writeForwarded(forwarded, context: context, promise: nil)
            if flush { context.flush() }
        case .rewritten(let head):
            self.send(.head(head), flush: flush, promise: nil)
        }
    }

    /// Flushes from this handler's place in the pipeline: the writes are all below it, and
    /// `channel.flush()` would enter at the pipeline's tail and pass this handler on the way.
    func flush() { self.context?.flush() }

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
    /// Closed by the pool so that another event loop's waiting request gets its slot.
    var closedForAnotherLoop = false
    /// Idle in the pool (`idle_timeout`) or awaiting a response head (`response_timeout`): the
    /// connection outlives its requests, so one armed check serves all of them.
    private var timer = DeadlineTimer()
    private var timerKind = TimerKind.idleInPool
    private enum TimerKind { case idleInPool, awaitingResponse }

    /// A socket has a TCP state to read (in-memory test channels do not); cast once, not per request.
    private let isSocket: Bool

    /// The loop's timers (the pool's), for the idle and response deadlines.
    private let timers: LoopTimers

    init(channel: Channel, handler: UpstreamConnectionHandler, endpoint: UpstreamEndpoint, timers: LoopTimers) {
        self.channel = channel
        self.timers = timers
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

    /// Closed after the idle timeout unless taken out of the pool first.
    func expireWhenIdle(_ timeouts: UpstreamTimeouts) {
        self.arm(.idleInPool, after: timeouts.idle, timeouts: timeouts)
    }

    /// The owner hears `upstreamResponseTimedOut` after the response timeout unless
    /// `clearDeadline` comes first.
    func expectResponse(_ timeouts: UpstreamTimeouts) {
        self.arm(.awaitingResponse, after: timeouts.response, timeouts: timeouts)
    }

    func clearDeadline() { self.timer.clear() }

    private func arm(_ kind: TimerKind, after delay: TimeAmount, timeouts: UpstreamTimeouts) {
        let now = self.handler.tickSlot.now()
        self.timerKind = kind
        self.horizon = min(timeouts.idle, timeouts.response)
        self.timer.set(now + delay, now: now, horizon: self.horizon, timers: self.timers, owner: self)
    }

    /// The shortest delay `arm` is given, from the settings last used.
    private var horizon = TimeAmount.seconds(1)

    func deadlineCheck(scheduledFor target: NIODeadline) {
        guard self.timer.isDue(checkScheduledFor: target, horizon: self.horizon, timers: self.timers, owner: self) else {
            return
        }
        switch self.timerKind {
        case .idleInPool: self.close()
        case .awaitingResponse: self.handler.owner?.upstreamResponseTimedOut()
        }
    }
}
