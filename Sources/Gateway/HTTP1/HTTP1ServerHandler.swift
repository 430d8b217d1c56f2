import NIOCore
import NIOHTTP1

/// Everything a client connection needs from the running gateway. A class: every request passes
/// it on, and one reference costs one retain where the struct's copy cost one per field.
final class ConnectionServices {
    let holder: RuntimeHolder
    /// The config snapshot for a request starting now.
    var runtime: GatewayRuntime { self.holder.current }
    let listener: ListenerInfo
    let loop: LoopResources
    let observability: Observability
    /// Set by the protocol switch once the TLS handshake is done (for the access log).
    let tlsVersion: String?
    /// Reload and config dump, on the admin listener only.
    let admin: AdminControl?

    init(
        holder: RuntimeHolder, listener: ListenerInfo, loop: LoopResources, observability: Observability,
        tlsVersion: String? = nil, admin: AdminControl? = nil
    ) {
        self.holder = holder
        self.listener = listener
        self.loop = loop
        self.observability = observability
        self.tlsVersion = tlsVersion
        self.admin = admin
    }

    /// The same services, for a connection whose TLS handshake negotiated `tlsVersion`.
    func with(tlsVersion: String?) -> ConnectionServices {
        ConnectionServices(
            holder: self.holder, listener: self.listener, loop: self.loop, observability: self.observability,
            tlsVersion: tlsVersion, admin: self.admin
        )
    }
}

/// Serves HTTP/1.x on one client connection: one request at a time (pipelined requests wait in
/// order), each through `RequestPipeline` and, when proxied, a `RequestExchange`. Owns the read side:
/// socket reads stop while the upstream cannot take more body, and while a response is pending and
/// pipelined parts are queued (so further pipelined requests stay in the kernel, not here).
///
/// What one socket read decodes to is queued whatever its size, so the queue is also bounded by
/// count: past `defaultMaxQueuedRequests` pipelined requests, the rest of the input is discarded and the
/// connection closes after answering the queued ones (the client retries the rest, RFC 9112 §9.3.2).
///
/// Those connection rules (keep-alive, the pipelined queue, read gating, draining) are
/// `StateMachine`'s, tested without a channel; this class does the I/O and keeps the data of the
/// request in flight.
final class HTTP1ServerHandler: ChannelDuplexHandler, DownstreamResponder, DeadlineTimerOwner, TickFlushing {
    /// Requests arrive as bytes: the handler parses them itself (`HTTP1RequestParser`), so no
    /// decoder handler sits in front and no part is boxed into a `NIOAny`.
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = HTTPServerResponsePart
    /// Responses leave as bytes: the handler is its own response encoder, so a part is neither boxed
    /// into a `NIOAny` nor passed through a separate encoder handler.
    typealias OutboundOut = IOData

    /// The data of the request in flight; where its halves are is `state.request`. The two exist
    /// together: made in `startRequest` or `beginErrorRequest`, ended in `requestFinished`.
    private struct InFlight: ~Copyable {
        var method: HTTPMethod
        var version: HTTPVersion
        var requestID: String
        var exchange: RequestExchange?
        var bodyBytes = 0
        /// CORS fields and `Vary: Origin` for whatever response this request gets.
        var responseAdditions = ResponseAdditions.none

        var record: RequestRecord

        /// The request made up to carry an answer to input with no usable head.
        static func forError() -> InFlight {
            let requestID = RequestIdentity.requestID(clientSupplied: nil)
            return InFlight(method: .GET, version: .http1_1, requestID: requestID, record: .unparsed(version: .http1_1, requestID: requestID))
        }
    }

    private let services: ConnectionServices
    private var context: ChannelHandlerContext!
    /// The channel's allocator, read once: each `context.channel` is a retain and a release.
    private var allocator = ByteBufferAllocator()
    /// The socket's writability, kept from `channelWritabilityChanged` (NIO fires it in the same
    /// call that flips it): reading `context.channel.isWritable` on every request and read cost
    /// ~1% of an HTTP/1.1 request in channel lookups and reference counting.
    private var socketIsWritable = true
    private var current: InFlight?
    /// The connection's state: the request's halves, the pipelined queue, keep-alive, read gating.
    private var state: StateMachine
    /// Set while `serveQueued` runs: a request finishing inside it leaves the next one to that loop
    /// (one stack frame per request would overflow the stack on a long pipeline).
    private var draining = false
    private var parser: HTTP1RequestParser
    /// The request being read asks to switch protocols (a WebSocket handshake may hold parsing).
    private var requestAsksToSwitch = false
    /// Read bytes not parsed yet: the start of a head or line split across reads, requests behind
    /// a held WebSocket handshake, or input after a closing response.
    private var unparsed: ByteBuffer?
    /// The first read after `becameIdle` starts the `client_header` clock (408): a client
    /// trickling a head byte by byte (slowloris) does not look idle.
    private var firstReadStartsHeaderClock = true
    /// When bytes last arrived: a request body that stops arriving for `timeouts.idle` is cut off.
    private var lastRead = NIODeadline.now()
    /// This loop's iteration stamp (`gateway_event_loop_tick_seconds`); made on the loop that runs
    /// the handler.
    private let tickSlot = EventLoopTicks.currentSlot()
    /// Set once the connection is a WebSocket tunnel; the HTTP/1.1 codec is gone then.
    private var tunnel: ByteTunnel?
    /// The response encoder's state: the kept head buffer and whether the body is chunked.
    private var responseFraming = KeptHeadFraming()

    /// Writes one response part as bytes, as NIO's `HTTPResponseEncoder` would.
    private func emit(_ part: HTTPServerResponsePart, context: ChannelHandlerContext, promise: EventLoopPromise<Void>? = nil) {
        self.responseFraming.writeResponse(part, context: context, promise: promise)
    }
    /// The connection's one deadline: idle between requests, the client header, or a stalled body.
    private var timer = DeadlineTimer()
    private var timerKind = TimerKind.idle
    private enum TimerKind { case idle, header, bodyStall }
    private var peer = PeerAddress.unknown
    private var snapshot = RuntimeSnapshot()
    /// The last request's `Host` text, reused while the next names the same host.
    private var recentHost = RecentText()
    /// An exchange whose upstream side starts when the current read burst has been decoded: a
    /// malformed body in the same packet as its head is then refused before anything is sent.
    private var pendingStart: RequestExchange?
    /// A response's end waits in the loop's `TickFlushes`; closing flushes it first.
    private var flushQueued = false

    init(services: ConnectionServices, maxQueuedRequests: Int = HTTP1ServerHandler.defaultMaxQueuedRequests) {
        self.services = services
        self.state = StateMachine(maxQueuedRequests: maxQueuedRequests)
        self.parser = HTTP1RequestParser(maxHeadBytes: services.runtime.traffic.maxHeaderBytes)
    }

    /// The config snapshot for a request starting now.
    private func runtime() -> GatewayRuntime {
        if let runtime = self.snapshot.unchanged(at: self.services.holder.generation) { return runtime }
        return self.snapshot.current(from: self.services.holder)
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.allocator = context.channel.allocator
        self.socketIsWritable = context.channel.isWritable
        self.context = context
        self.services.observability.metrics.connections.increment([self.services.listener.name, "http/1.1"])
        self.peer = PeerAddress(context.channel.remoteAddress)
        if context.channel.isActive { self.becameIdle() }
    }

    func channelActive(context: ChannelHandlerContext) {
        // Added after activation (behind TLS), `handlerAdded` already did this.
        if self.timer.deadline == nil {
            self.peer = PeerAddress(context.channel.remoteAddress)
            self.becameIdle()
        }
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.services.observability.metrics.connections.increment([self.services.listener.name, "http/1.1"], by: -1)
        self.teardown()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.teardown()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.tickSlot.ioBegins()
        self.lastRead = self.tickSlot.now()
        if self.firstReadStartsHeaderClock {
            self.firstReadStartsHeaderClock = false
            self.requestBytesArrived()
        }
        // Requests read with a closing response are never answered; input after a parse failure
        // is dropped.
        guard !self.state.closed, !self.parser.hasFailed else { return }
        var input = self.unwrapInboundIn(data)
        if var unparsed = self.unparsed.take() {
            unparsed.writeBuffer(&input)
            input = unparsed
        }
        self.parse(&input)
    }

    /// Hands each request part in `input` to the connection's rules, until it is all read, the
    /// parser waits (a WebSocket handshake awaits its 101) or the connection closes; what is left
    /// stays for later.
    private func parse(_ input: inout ByteBuffer) {
        while !self.state.closed {
            let event: HTTP1RequestParser.Event?
            do {
                event = try self.parser.next(&input)
            } catch {
                self.unparsed = nil
                return self.parseFailed(error == .headTooLarge ? .headersTooLarge : .badRequest("malformed HTTP request"))
            }
            let part: HTTP1RequestPart
            switch consume event {  // the head moved into its part, not copied
            case .none:
                if input.readableBytes > 0 { self.unparsed = input }
                return
            case .head(let head, let keepAlive, let asksToSwitch):
                self.requestAsksToSwitch = asksToSwitch
                part = .head(head, keepAlive: keepAlive)
            case .body(let body):
                part = .body(body)
            case .end:
                self.holdParsingForSwitch()
                part = .end
            }
            // A pipelined request waits (queued) until the current response is done.
            if self.state.partDecoded(part) { self.handle(part) }
        }
    }

    /// What is left after a held WebSocket handshake that did not switch is HTTP/1.1 again; parsed
    /// on the next loop tick, outside the finishing request's call.
    private func resumeParsing() {
        self.parser.resume()
        guard let context else { return }
        context.eventLoop.assumeIsolated().execute {
            guard !self.state.closed, !self.parser.hasFailed, var input = self.unparsed.take() else { return }
            self.parse(&input)
            self.startPendingExchange()
        }
    }

    /// The most pipelined requests one connection may have waiting. A read of 64 KiB holds about
    /// 2,500 minimal requests; 256 keeps a connection's queue small, and clients that pipeline at
    /// all keep far fewer in flight.
    static let defaultMaxQueuedRequests = 256

    /// The first bytes of a new request: its `client_header` clock starts.
    func requestBytesArrived() {
        if self.current == nil {
            let traffic = self.runtime().traffic
            self.arm(.header, after: traffic.clientHeaderTimeout, traffic: traffic)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            if self.state.quiesce() { self.close() }
            if let tunnel = self.tunnel {
                // Just before the drain closes what is left, so the peers hear why.
                let drain = self.runtime().traffic.drainTimeout
                let allocator = context.channel.allocator
                context.eventLoop.assumeIsolated().scheduleTask(in: max(.zero, drain - .milliseconds(200))) {
                    tunnel.endForDrain(allocator: allocator)
                }
            }
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// Input that is not a request in the strict grammar: answered 400 (431 for a head over the
    /// limit) after the requests before it, or at once when it broke a request in flight.
    private func parseFailed(_ gatewayError: GatewayError) {
        switch self.state.parseFailed(gatewayError) {
        case .answerAfterQueued:
            break
        case .abort:
            self.current?.exchange?.cancel()
            self.close()
        case .answerAndClose:
            // A broken body after a good head: the upstream connection is dropped (the
            // upstream sees an aborted request, never a complete one) and the client gets 400.
            if let exchange = self.current?.exchange {
                exchange.cancel()
                self.pendingStart = nil
                self.current!.exchange = nil
            }
            self.beginErrorRequest()
            self.writeLocal(gatewayError.response(requestID: self.current!.requestID, allocator: self.allocator), forceClose: true)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // I/O errors: the connection is gone either way.
        self.close()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.startPendingExchange()
        context.fireChannelReadComplete()
    }

    private func startPendingExchange() {
        guard let exchange = self.pendingStart else { return }
        self.pendingStart = nil
        exchange.start()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        self.socketIsWritable = writable
        self.current?.exchange?.downstreamWritabilityChanged(isWritable: writable)
        if writable { self.readIfPending() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        // A tunnel's own handler decides (backpressure from the upstream side).
        if self.state.readRequested(writable: self.socketIsWritable) { context.read() }
    }

    private func readIfPending() {
        guard let context, self.state.readMayResume(writable: self.socketIsWritable) else { return }
        context.read()
    }

    // MARK: - Requests

    private func handle(_ part: HTTP1RequestPart) {
        switch part {
        case .head(let head, let keepAlive):
            self.startRequest(head, keepAlive: keepAlive)
        case .body(let body):
            self.bodyReceived(body)
        case .end:
            self.endReceived()
        }
    }

    /// A request made up to carry an answer to input with no usable head (unless one is in flight).
    private func beginErrorRequest() {
        self.state.errorRequestStarted()
        if self.current == nil { self.current = .forError() }
    }

    /// - Parameter keepAlive: the parser's verdict, so the connection is kept exactly when the
    ///   parser reads on (`Proxy-Connection: close` included, as llhttp reads it).
    private func startRequest(_ head: RequestHead, keepAlive: Bool) {
        self.timer.clear()
        var record: RequestRecord?
        let dispatch = RequestDispatch.start(
            head, at: self.tickSlot.now(), record: &record, recentHost: &self.recentHost, streamEnded: nil, peer: self.peer,
            services: self.services, runtime: self.runtime(),
            downstream: self, allocator: self.allocator
        )
        self.current = InFlight(
            method: head.method, version: head.version, requestID: dispatch.requestID,
            responseAdditions: dispatch.responseAdditions, record: record.take()!
        )
        self.state.requestStarted(keepAliveRequested: head.version == .http1_1 && keepAlive, hasBody: dispatch.hasBody)
        switch dispatch.outcome {
        case .respond(let response):
            self.writeLocal(response, forceClose: false)
        case .proxy(let exchange):
            if dispatch.hasBody {
                let traffic = self.runtime().traffic
                self.arm(.bodyStall, after: traffic.idleTimeout, traffic: traffic)
            }
            self.current!.exchange = exchange
            self.pendingStart = exchange
        }
    }

    private func bodyReceived(_ body: ByteBuffer) {
        guard self.current != nil else { return }
        // Edited in place: a copy taken out and written back would count every field of the record twice.
        self.current!.bodyBytes += body.readableBytes
        self.current!.record.bytesIn += body.readableBytes
        guard let exchange = self.current!.exchange else {
            // Answered locally; the rest of the body is dropped and the connection closes after.
            return
        }
        if self.current!.bodyBytes > self.runtime().traffic.maxBodyBytes {
            exchange.cancel()
            self.current!.exchange = nil
            if self.state.request?.responseStarted ?? false {
                self.current!.record.source = .payloadTooLarge
                self.close()
            } else {
                self.writeLocal(
                    GatewayError.payloadTooLarge.response(
                        requestID: self.current!.requestID, trace: self.current!.record.trace, allocator: self.allocator
                    ),
                    forceClose: true
                )
            }
            return
        }
        exchange.requestBodyReceived(body)
    }

    private func endReceived() {
        guard self.current != nil else { return }
        let finished = self.state.requestEnded()
        self.current!.exchange?.requestEndReceived()
        if finished { self.requestFinished() }
    }

    /// Both the request and its response are complete.
    private func requestFinished() {
        // Taken, not copied: every field of the request's data is a reference to count.
        guard var current = self.current.take() else { return }
        self.log(&current)
        let (next, resumeParsing) = self.state.requestFinished()
        if resumeParsing {
            // The upstream refused the switch: the bytes after the handshake are HTTP/1.1 again.
            self.resumeParsing()
        }
        switch next {
        case .closeAfterResponse: self.closeAfterResponse()
        case .serveQueued: self.serveQueued()
        }
    }

    /// Serves pipelined requests in order, iteratively: a request answered locally finishes inside
    /// `handle`, and its `requestFinished` returns to this loop instead of recursing into the next.
    private func serveQueued() {
        guard !self.draining else { return }
        self.draining = true
        defer { self.draining = false }
        while !self.state.closed {
            while let part = self.state.nextQueuedPart() {
                self.handle(part)
            }
            // An exchange can end as soon as it starts (no healthy upstream, rate limited): the
            // next queued request is then served by this same loop.
            guard !self.state.closed, self.pendingStart != nil else { break }
            self.startPendingExchange()
        }
        if self.state.closed { return }
        if let error = self.state.takeBrokenInput(), self.context != nil {
            self.beginErrorRequest()
            self.writeLocal(error.response(requestID: self.current!.requestID, allocator: self.allocator), forceClose: true)
            return
        }
        if self.current == nil { self.becameIdle() }
        self.readIfPending()
    }

    // MARK: - DownstreamResponder

    var isWritable: Bool { self.context != nil && self.socketIsWritable }

    /// The exchange serving the current request, if it is proxied.
    var currentExchange: RequestExchange? { self.current?.exchange }

    /// Whether `exchange` serves the current request; a finished exchange's late calls are ignored.
    private func isCurrent(_ exchange: RequestExchange) -> Bool {
        self.current?.exchange === exchange
    }

    func sendContinue(for exchange: RequestExchange) {
        guard let context, self.isCurrent(exchange) else { return }
        self.emit(.head(HTTPResponseHead(version: .http1_1, status: .continue)), context: context)
        context.flush()
    }

    func sendResponseHead(for exchange: RequestExchange, _ head: HTTPResponseHead, framing: HeaderRewriter.ResponseFraming) {
        guard let context, self.isCurrent(exchange) else { return }
        var head = head
        if framing == .closeDelimited { self.state.responseIsCloseDelimited() }
        if self.proxiedResponseStarts(status: head.status.code) {
            head.headers.replaceOrAdd(name: "connection", value: "close")
        }
        self.emit(.head(head), context: context)
    }

    func sendForwardedResponseHead(for exchange: RequestExchange, _ head: ForwardedResponseHead) {
        guard let context, self.isCurrent(exchange) else { return }
        let close = self.proxiedResponseStarts(status: head.upstream.status.code)
        let framing = self.responseFraming.writeForwardedResponse(head, close: close, context: context)
        if framing == .closeDelimited { self.state.responseIsCloseDelimited() }
    }

    /// The current request's proxied response starts; returns whether the connection closes after it.
    private func proxiedResponseStarts(status: UInt) -> Bool {
        self.current!.record.status = Int(status)
        return self.state.responseStarts()
    }

    func sendResponseBody(for exchange: RequestExchange, _ body: ByteBuffer) {
        guard let context, self.isCurrent(exchange) else { return }
        self.current?.record.bytesOut += body.readableBytes
        self.emit(.body(.byteBuffer(body)), context: context)
    }

    func flush(for exchange: RequestExchange) {
        if self.isCurrent(exchange) { self.flushResponse() }
    }

    /// Flushes what was written, a forwarded head still waiting for its body included.
    private func flushResponse() {
        guard let context else { return }
        self.responseFraming.writeWaitingHead(context: context)
        context.flush()
    }

    func sendResponseEnd(for exchange: RequestExchange) {
        guard let context, self.isCurrent(exchange) else { return }
        // Finishing waits for the exchange to say it is done (`exchangeFinished`).
        _ = self.state.responseEnded()
        self.emit(.end(nil), context: context)
        self.flushSoon()
    }

    /// Flushes at the end of the event loop's tick, with the other connections' responses (a
    /// response's end, proxied or the gateway's own; closing flushes at once).
    private func flushSoon() {
        guard !self.flushQueued else { return }
        self.flushQueued = true
        self.services.loop.flushes.add(self)
    }

    func flushAtTickEnd() {
        guard self.flushQueued else { return }
        self.flushQueued = false
        self.flushResponse()
    }

    func sendErrorResponse(for exchange: RequestExchange, _ error: GatewayError) {
        guard self.isCurrent(exchange), let requestID = self.current?.requestID else { return }
        guard !(self.state.request?.responseStarted ?? false), self.context != nil else {
            self.close()
            return
        }
        self.current!.record.note(exchange)
        self.current!.exchange = nil
        if self.pendingStart === exchange { self.pendingStart = nil }
        let response = error.response(requestID: requestID, allocator: self.allocator)
        self.writeLocal(response, forceClose: false)
    }

    func pauseRequestBody(for exchange: RequestExchange) {
        if self.isCurrent(exchange) { self.state.pauseRequestBody() }
    }

    func resumeRequestBody(for exchange: RequestExchange) {
        guard self.isCurrent(exchange) else { return }
        self.state.resumeRequestBody()
        self.readIfPending()
    }

    func abortResponse(for exchange: RequestExchange) {
        if self.isCurrent(exchange) { self.close() }
    }

    func exchangeFinished(for exchange: RequestExchange) {
        guard self.isCurrent(exchange), self.current != nil else { return }
        self.current!.record.note(exchange)
        switch self.state.exchangeFinished() {
        case .requestFinished: self.requestFinished()
        case .closeAfterResponse: self.closeAfterResponse()
        case .none: break
        }
    }

    func upgradeToTunnel(for exchange: RequestExchange, _ head: HTTPResponseHead, upstream connection: UpstreamConnection) {
        guard self.isCurrent(exchange), let context, let requestID = self.current?.requestID, let handshake = exchange.webSocket else {
            connection.close()
            return
        }
        self.current!.record.note(exchange)
        self.current!.exchange = nil
        // Only a handshake that held parsing can switch: one pipelined behind another
        // request had its following bytes parsed as HTTP already.
        guard self.state.parsingHeld, self.state.request?.requestEnded ?? false else {
            connection.close()
            self.writeLocal(GatewayError.badUpstreamResponse.response(requestID: requestID, allocator: self.allocator), forceClose: true)
            return
        }
        let tunnel = ByteTunnel(eventLoop: context.eventLoop, idleTimeout: handshake.idleTimeout)
        _ = self.state.responseStarts()
        self.current!.record.status = 101
        self.timer.cancel()
        self.emit(.head(WebSocketHandshake.clientHead(head, requestID: requestID)), context: context)
        self.emit(.end(nil), context: context)
        context.flush()
        do {
            try TunnelSwitch.install(tunnel, client: context, early: self.unparsed.take(), upstream: connection)
        } catch {
            connection.close()
            self.close()
            return
        }
        self.tunnel = tunnel
        let readOwed = self.state.tunnelStarted()
        let metrics = self.services.observability.metrics
        metrics.tunnelsActive.increment([handshake.routeName])
        tunnel.onEnd = { [weak self] totals in
            metrics.tunnelsActive.increment([handshake.routeName], by: -1)
            metrics.tunnelBytes.increment([handshake.routeName, "in"], by: Double(totals.bytesIn))
            metrics.tunnelBytes.increment([handshake.routeName, "out"], by: Double(totals.bytesOut))
            guard let self, self.current != nil else { return }
            self.current!.record.bytesIn += totals.bytesIn
            self.current!.record.bytesOut += totals.bytesOut
        }
        tunnel.start()
        // Reads were held while the handshake was pending.
        if readOwed { context.read() }
    }

    // MARK: - Writing local responses

    private func writeLocal(_ response: LocalResponse, forceClose: Bool) {
        guard let context, let requestID = self.current?.requestID else { return }
        let method = self.current!.method, requestVersion = self.current!.version
        let closing = self.state.responseStarts(forceClose: forceClose || response.closeConnection)
        let requestEnded = self.state.responseEnded()
        var headers = response.headers
        self.current!.responseAdditions.stampLocalResponse(&headers, requestID: requestID, tls: self.services.listener.isTLS)
        if closing { headers.replaceOrAdd(name: "connection", value: "close") }
        self.current!.record.status = Int(response.status.code)
        self.current!.record.source = response.source
        self.current!.record.bytesOut += method.isHEAD ? 0 : response.body.readableBytes
        let version: HTTPVersion = requestVersion.major == 1 && requestVersion.minor == 0 ? .http1_0 : .http1_1
        self.emit(.head(HTTPResponseHead(version: version, status: response.status, headers: headers)), context: context)
        if !method.isHEAD && response.body.readableBytes > 0 {
            self.emit(.body(.byteBuffer(response.body)), context: context)
        }
        if closing {
            // Logged when written: the connection may take a while to close (close_notify, half-close).
            self.log(&self.current!)
            if self.services.listener.isTLS {
                _ = self.state.close()
                let loopBound = context.loopBound
                let written = context.eventLoop.makePromise(of: Void.self)
                self.emit(.end(nil), context: context, promise: written)
                context.flush()
                written.futureResult.assumeIsolated().whenComplete { _ in
                    loopBound.value.close(promise: nil)
                }
            } else {
                self.emit(.end(nil), context: context)
                context.flush()
                self.closeAfterResponse()
            }
            return
        }
        self.emit(.end(nil), context: context)
        self.flushSoon()
        // A bodiless request's `.end` may still be in flight; `endReceived` finishes it then.
        if requestEnded { self.requestFinished() }
    }

    // MARK: - Timers and closing

    private func becameIdle() {
        self.firstReadStartsHeaderClock = true
        let traffic = self.runtime().traffic
        // A reload's header limit applies from the next request on.
        if self.parser.isBetweenRequests { self.parser.maxHeadBytes = traffic.maxHeaderBytes }
        self.arm(.idle, after: traffic.idleTimeout, traffic: traffic)
    }

    /// - Parameter now: the iteration's stamp unless the caller read the clock itself.
    private func arm(_ kind: TimerKind, after delay: TimeAmount, traffic: TrafficSettings, now: NIODeadline? = nil) {
        guard self.context != nil else { return }
        let now = now ?? self.tickSlot.now()
        self.timerKind = kind
        self.timer.set(now + delay, now: now, horizon: Self.timerHorizon(traffic), timers: self.services.loop.timers, owner: self)
    }

    /// The shortest delay `arm` is given (a body stall re-check may be shorter, and then schedules).
    private static func timerHorizon(_ traffic: TrafficSettings) -> TimeAmount {
        min(traffic.clientHeaderTimeout, traffic.idleTimeout)
    }

    func deadlineCheck(scheduledFor target: NIODeadline) {
        guard self.context != nil, self.tunnel == nil else { return }
        let traffic = self.runtime().traffic
        guard self.timer.isDue(checkScheduledFor: target, horizon: Self.timerHorizon(traffic), timers: self.services.loop.timers, owner: self)
        else { return }
        switch self.timerKind {
        case .idle: self.close()
        case .header: self.headerTimedOut()
        case .bodyStall: self.bodyStallCheck(traffic: traffic)
        }
    }

    /// A client that stops sending a request body it announced (slowloris on the body) would hold
    /// an upstream connection forever; after `timeouts.idle` without a byte it is cut off. Time the
    /// gateway itself paused reading (upstream backpressure) does not count.
    private func bodyStallCheck(traffic: TrafficSettings) {
        guard self.current != nil, let request = self.state.request, request.bodyOutstanding else { return }
        let idle = traffic.idleTimeout
        // The clock, not the iteration's stamp: the time left is counted from the same reading
        // as the silence, or a re-check would fall due in the past and run again at once.
        let now = NIODeadline.now()
        let silent = now - self.lastRead
        let paused = self.state.bodyPaused
        if paused || silent < idle {
            self.arm(.bodyStall, after: paused ? idle : idle - silent, traffic: traffic, now: now)
            return
        }
        self.current!.exchange?.cancel()
        self.current!.exchange = nil
        self.pendingStart = nil
        if request.responseStarted {
            self.current!.record.source = .requestTimeout
            self.close()
        } else {
            self.writeLocal(
                GatewayError.bodyTimeout.response(
                    requestID: self.current!.requestID, trace: self.current!.record.trace, allocator: self.allocator
                ),
                forceClose: true
            )
        }
    }

    private func headerTimedOut() {
        guard self.current == nil, self.context != nil else { return }
        self.beginErrorRequest()
        self.writeLocal(GatewayError.requestTimeout.response(requestID: self.current!.requestID, allocator: self.allocator), forceClose: true)
    }

    private func cancelTimer() {
        self.timer.cancel()
    }

    private func close() {
        guard let context, self.state.close() else { return }
        self.flushAtTickEnd()  // a close drops what is not flushed
        context.close(promise: nil)
    }

    /// How long a plaintext connection stays half-closed after its last response.
    static let resetAvoidanceDelay: TimeAmount = .milliseconds(500)

    /// Ends the connection after a complete response. A plain close drops response bytes not yet
    /// written, and with unread input (pipelined requests past the cap, an unread body, junk) the
    /// kernel answers it with RST, which can destroy the response still in flight to the client.
    /// So a plaintext socket closes its output first (FIN once the response is written) and fully
    /// a moment later, as Go's net/http does; TLS ends with close_notify in `TLSServerHandler`.
    private func closeAfterResponse() {
        guard !self.services.listener.isTLS else {
            self.close()
            return
        }
        guard let context, self.state.close() else { return }
        self.cancelTimer()
        self.flushAtTickEnd()
        context.close(mode: .output, promise: nil)
        let channel = context.channel
        context.eventLoop.scheduleTask(in: Self.resetAvoidanceDelay) { channel.close(promise: nil) }
    }

    /// The log + metrics phase; a request cut off before its response counts as 499 (client
    /// closed), as nginx logs it. Marks the record logged, so a request is logged once.
    private func log(_ current: inout InFlight) {
        guard !current.record.logged else { return }
        current.record.logged = true
        current.record.settle(responseComplete: self.state.request?.responseEnded ?? false, exchange: current.exchange)
        self.services.observability.finished(current.record, tlsVersion: self.services.tlsVersion)
    }

    private func teardown() {
        if self.current != nil { self.log(&self.current!) }
        self.cancelTimer()
        self.pendingStart = nil
        self.current?.exchange?.cancel()
        self.current?.exchange = nil
        self.state.connectionEnded()
    }

    // MARK: - Upgrade

    /// A WebSocket handshake's request has ended: the bytes after it wait, unparsed, until the
    /// upstream's answer decides whether they are the tunnel's or more HTTP/1.1.
    private func holdParsingForSwitch() {
        guard self.requestAsksToSwitch else { return }
        self.requestAsksToSwitch = false
        if self.state.queued.isEmpty, let request = self.state.request, !request.requestEnded,
           self.current?.exchange?.webSocket != nil {
            self.state.holdParsing()
            self.parser.hold()
        }
    }
}

/// Pipelined request parts waiting for the current response, bounded by request count: what one
/// socket read decodes to arrives at once, whatever the read-side backpressure.
struct PipelinedRequests {
    private var parts = CircularBuffer<HTTP1RequestPart>()
    /// Request heads in `parts`.
    private var requests = 0
    private let maxRequests: Int
    /// More than `maxRequests` were pipelined, or bytes after a complete request did not parse:
    /// further input is dropped and the connection closes once what came before is answered.
    private(set) var discarding = false
    /// The answer (400/431) to bytes that did not parse, due after the requests before them.
    private var brokenInput: GatewayError?

    init(maxRequests: Int) { self.maxRequests = maxRequests }

    var isEmpty: Bool { self.parts.isEmpty }
    var count: Int { self.parts.count }

    /// Queues `part`, or starts discarding when it is the head of one request too many.
    mutating func append(_ part: HTTP1RequestPart) {
        guard !self.discarding else { return }
        if case .head = part {
            guard self.requests < self.maxRequests else {
                self.discarding = true
                return
            }
            self.requests += 1
        }
        self.parts.append(part)
    }

    mutating func popFirst() -> HTTP1RequestPart? {
        let part = self.parts.popFirst()
        if case .head = part { self.requests -= 1 }
        return part
    }

    /// Input after the queued requests is broken: they are answered, then `error`.
    mutating func discard(answering error: GatewayError) {
        if !self.discarding { self.brokenInput = error }
        self.discarding = true
    }

    /// Whether the request just taken is the last one answered before the input was cut (its
    /// response closes the connection).
    var cutHere: Bool { self.discarding && self.requests == 0 && self.brokenInput == nil }

    mutating func takeBrokenInput() -> GatewayError? {
        defer { self.brokenInput = nil }
        return self.brokenInput
    }

    mutating func removeAll() {
        self.parts.removeAll()
        self.requests = 0
    }
}
