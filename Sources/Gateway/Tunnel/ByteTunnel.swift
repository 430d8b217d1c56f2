import NIOCore
import NIOHTTP1

/// What a tunnel moved, reported once when it ends (access log, metrics).
struct TunnelTotals {
    /// Client → upstream.
    var bytesIn = 0
    /// Upstream → client.
    var bytesOut = 0
    /// Why it ended: `client_closed`, `upstream_closed`, `idle_timeout`, `error`, `drain`.
    var reason = "client_closed"
}

/// One end of a `ByteTunnel`: a channel of its own (`TunnelEndpointHandler`), or an HTTP/2 stream
/// (RFC 8441) whose DATA frames carry the bytes.
protocol TunnelSide: AnyObject {
    var isWritable: Bool { get }
    func send(_ buffer: ByteBuffer)
    func flush()
    func pauseReads()
    func resumeReads()
    /// Ends this side once what was sent to it is written.
    func close()
}

/// A byte tunnel between a client and an upstream connection after a protocol switch (a
/// WebSocket 101). Both live on the same event loop (the upstream pool is per loop), so the two
/// ends call each other directly.
///
/// Backpressure both ways: when one side's socket stops being writable, the other side stops
/// reading until it drains, so a slow reader never makes the gateway buffer more than the
/// channel's write watermarks. Idle for `idleTimeout` in both directions, the tunnel closes both
/// sockets.
final class ByteTunnel {
    let client: TunnelSide
    let upstream: TunnelEndpointHandler
    private let eventLoop: EventLoop
    private let idleTimeout: TimeAmount
    /// On the loop's clock (virtual in `EmbeddedEventLoop` tests).
    private var lastActivity: NIODeadline
    private var idleCheck: Scheduled<Void>?
    private(set) var totals = TunnelTotals()
    private var fromClient = FrameBoundary()
    private var fromUpstream = FrameBoundary()
    private var ended = false
    /// Called once, on the event loop, when the tunnel is over.
    var onEnd: ((TunnelTotals) -> Void)?

    /// - Parameter client: the client end; nil: a channel handler made here (`clientHandler`).
    init(eventLoop: EventLoop, idleTimeout: TimeAmount, client: TunnelSide? = nil) {
        self.eventLoop = eventLoop
        self.idleTimeout = idleTimeout
        self.lastActivity = eventLoop.now
        self.client = client ?? TunnelEndpointHandler(side: .client)
        self.upstream = TunnelEndpointHandler(side: .upstream)
        self.clientHandler?.tunnel = self
        self.upstream.tunnel = self
    }

    /// The client end when it is a channel handler (HTTP/1.1).
    var clientHandler: TunnelEndpointHandler? { self.client as? TunnelEndpointHandler }

    func start() {
        self.lastActivity = self.eventLoop.now
        self.scheduleIdleCheck(after: self.idleTimeout)
    }

    func relay(_ buffer: ByteBuffer, from side: TunnelEndpointHandler.Side) {
        self.lastActivity = self.eventLoop.now
        switch side {
        case .client:
            self.totals.bytesIn += buffer.readableBytes
            self.fromClient.consume(buffer)
            self.upstream.send(buffer)
            if !self.upstream.isWritable { self.client.pauseReads() }
        case .upstream:
            self.totals.bytesOut += buffer.readableBytes
            self.fromUpstream.consume(buffer)
            self.client.send(buffer)
            if !self.client.isWritable { self.upstream.pauseReads() }
        }
    }

    func readComplete(from side: TunnelEndpointHandler.Side) {
        (side == .client ? self.upstream : self.client).flush()
    }

    /// Bytes a connection's handler read after the 101, before the tunnel started, come without a
    /// read-complete: whatever they were relayed to is flushed here, or an upstream that speaks
    /// first (a server push right after the 101) would wait for the client's first frame.
    func flushBothSides() {
        self.client.flush()
        self.upstream.flush()
    }

    func writabilityChanged(of side: TunnelEndpointHandler.Side, isWritable: Bool) {
        guard isWritable else { return }
        (side == .client ? self.upstream : self.client).resumeReads()
    }

    /// A drain is ending: both sides get a close frame "going away" when no frame is half relayed
    /// in either direction (else the sockets just close), then the tunnel ends.
    func endForDrain(allocator: ByteBufferAllocator) {
        guard !self.ended else { return }
        if self.fromClient.isAtBoundary && self.fromUpstream.isAtBoundary {
            self.client.send(FrameBoundary.goingAway(masked: false, allocator: allocator))
            self.upstream.send(FrameBoundary.goingAway(masked: true, allocator: allocator))
        }
        self.end(reason: "drain")
    }

    /// Ends both sides (once).
    func end(reason: String) {
        guard !self.ended else { return }
        self.ended = true
        self.totals.reason = reason
        self.idleCheck?.cancel()
        self.idleCheck = nil
        self.client.close()
        self.upstream.close()
        let onEnd = self.onEnd
        self.onEnd = nil
        // Breaks the tunnel ↔ handler cycle.
        self.clientHandler?.tunnel = nil
        self.upstream.tunnel = nil
        onEnd?(self.totals)
    }

    private func scheduleIdleCheck(after delay: TimeAmount) {
        self.idleCheck = self.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: delay) { [weak self] in
            guard let self, !self.ended else { return }
            let quiet = self.eventLoop.now - self.lastActivity
            if quiet >= self.idleTimeout {
                self.end(reason: "idle_timeout")
            } else {
                self.scheduleIdleCheck(after: self.idleTimeout - quiet)
            }
        }
    }
}

/// One end of a `ByteTunnel`, the innermost handler of its channel once the HTTP codec is gone.
final class TunnelEndpointHandler: ChannelDuplexHandler, TunnelSide {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Side { case client, upstream }

    let side: Side
    fileprivate var tunnel: ByteTunnel?
    private var context: ChannelHandlerContext?
    private var readGate = ReadGate()
    private var pendingFlush = false
    /// Writes wait here until `release`: the tunnel relays nothing before both ends are in place.
    private var held: [ByteBuffer]? = []

    init(side: Side) { self.side = side }

    var isWritable: Bool { self.context?.channel.isWritable ?? true }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Never passed on: the handlers behind this one speak HTTP, not the tunnelled protocol.
        self.tunnel?.relay(self.unwrapInboundIn(data), from: self.side)
    }

    /// Bytes of this side read before the tunnel started, relayed as if read now.
    func received(_ buffer: ByteBuffer) {
        self.tunnel?.relay(buffer, from: self.side)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.tunnel?.readComplete(from: self.side)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.tunnel?.writabilityChanged(of: self.side, isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.tunnel?.end(reason: self.side == .client ? "client_closed" : "upstream_closed")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.tunnel?.end(reason: "error")
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A half-close ends the tunnel: WebSocket closes with a close frame, not a FIN.
        if event as? ChannelEvent == .some(.inputClosed) {
            self.tunnel?.end(reason: self.side == .client ? "client_closed" : "upstream_closed")
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func read(context: ChannelHandlerContext) {
        self.readGate.read(context)
    }

    func send(_ buffer: ByteBuffer) {
        if self.held != nil {
            self.held!.append(buffer)
            return
        }
        guard let context else { return }
        context.write(self.wrapOutboundOut(buffer), promise: nil)
        self.pendingFlush = true
    }

    /// Both ends are in place: what waited is written.
    func release() {
        guard let held = self.held else { return }
        self.held = nil
        for buffer in held { self.send(buffer) }
        self.flush()
    }

    func flush() {
        guard self.pendingFlush, let context else { return }
        self.pendingFlush = false
        context.flush()
    }

    func pauseReads() { self.readGate.pause() }

    func resumeReads() { self.readGate.resume(self.context) }

    /// Closes once what was relayed to this side is written (the peer's close frame must arrive).
    func close() {
        guard let context else { return }
        self.pendingFlush = false
        // Not released yet: nothing can be written through it.
        guard self.held == nil, context.channel.isActive else {
            self.held = nil
            context.close(promise: nil)
            return
        }
        let loopBound = context.loopBound
        // A reader that never drains its socket does not hold the tunnel's memory for long.
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
        context.writeAndFlush(self.wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)))
            .assumeIsolated().whenComplete { _ in loopBound.value.close(promise: nil) }
    }
}

/// Turns an HTTP/1.1 client connection and an upstream connection into the two ends of a
/// `ByteTunnel`, right after the 101 has been written to the client.
enum TunnelSwitch {
    /// - Parameters:
    ///   - client: the context of the client connection's HTTP/1 handler; the tunnel end goes in
    ///     front of it, so the handler stays for the access log and the connection count.
    ///   - early: bytes the client sent after the handshake (frames sent before the 101 arrived),
    ///     which the handler read but did not parse.
    static func install(_ tunnel: ByteTunnel, client: ChannelHandlerContext, early: ByteBuffer?, upstream connection: UpstreamConnection) throws {
        guard let clientEnd = tunnel.clientHandler else { return }
        try client.pipeline.syncOperations.addHandler(clientEnd, position: .before(client.handler))
        clientEnd.release()
        if let early { clientEnd.received(early) }
        try self.installUpstream(tunnel, connection: connection)
    }

    /// The upstream half: the tunnel end goes in front of the connection's handler (the codec),
    /// which hands over the bytes it read after the 101.
    static func installUpstream(_ tunnel: ByteTunnel, connection: UpstreamConnection) throws {
        try connection.channel.pipeline.syncOperations.addHandler(tunnel.upstream, position: .before(connection.handler))
        tunnel.upstream.release()
        if let early = connection.handler.takeSwitchedBytes() { tunnel.upstream.received(early) }
        tunnel.flushBothSides()
        connection.handler.resumeReads()
    }
}
