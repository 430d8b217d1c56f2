import NIOCore
import NIOHTTP1

/// The client side of a proxied request, whatever its protocol (an HTTP/1.1 connection or an HTTP/2 stream).
/// The exchange drives it; all calls happen on the client connection's event loop. Every
/// call names its exchange: a responder that serves requests one after another (HTTP/1.1
/// pipelining) ignores calls from an exchange that is no longer its current one.
protocol DownstreamResponder: AnyObject {
    var isWritable: Bool { get }
    /// `100 Continue` for a client that asked for it, once the request is known to be forwarded.
    func sendContinue(for exchange: RequestExchange)
    func sendResponseHead(for exchange: RequestExchange, _ head: HTTPResponseHead, framing: HeaderRewriter.ResponseFraming)
    /// The upstream's head, rewritten for the client when it is written (an HTTP/1.1 connection
    /// writes its bytes in one pass); by default built and passed to `sendResponseHead`.
    func sendForwardedResponseHead(for exchange: RequestExchange, _ head: ForwardedResponseHead)
    func sendResponseBody(for exchange: RequestExchange, _ body: ByteBuffer)
    /// Response parts are written unflushed; one flush per upstream read coalesces head and body
    /// into one TLS record and one syscall.
    func flush(for exchange: RequestExchange)
    func sendResponseEnd(for exchange: RequestExchange)
    /// A gateway-made response (502/503/504) in place of the upstream's. It ends the exchange: no
    /// `exchangeFinished` follows.
    func sendErrorResponse(for exchange: RequestExchange, _ error: GatewayError)
    /// Stop and restart reading the request body (upstream backpressure).
    func pauseRequestBody(for exchange: RequestExchange)
    func resumeRequestBody(for exchange: RequestExchange)
    /// The response started but cannot be completed: the client connection must be torn down.
    func abortResponse(for exchange: RequestExchange)
    /// The exchange is over; the responder may serve its next request.
    func exchangeFinished(for exchange: RequestExchange)
    /// The upstream accepted `exchange.webSocket`'s handshake: `connection` is the responder's to tunnel.
    func upgradeToTunnel(for exchange: RequestExchange, _ head: HTTPResponseHead, upstream connection: UpstreamConnection)
}

extension DownstreamResponder {
    func sendForwardedResponseHead(for exchange: RequestExchange, _ head: ForwardedResponseHead) {
        let (built, framing) = head.built
        self.sendResponseHead(for: exchange, built, framing: framing)
    }
}

/// One proxied request, from the dispatch's decision to its last response byte: the unit the
/// codecs serve. It runs the request's phases in order — the asynchronous filters (the rate
/// limiter answers continue, respond or wait; a refusal held back until the limiter has counted
/// the request), the response cache, the upstream leg, the one response filter (its
/// `RequestContext`: HSTS, request id, CORS and RateLimit fields written in one pass) — and ends
/// once, in `finish`, which tells the responder how it ended (where the request is logged).
///
/// Streams both ways under backpressure: request body reads pause while the upstream socket is
/// full, upstream reads pause while the client socket is full. What to do on each event is
/// `StateMachine`'s decision (`RequestExchange+StateMachine.swift`); the upstream's resources are
/// its `UpstreamLeg`; this class does the I/O between them.
final class RequestExchange: UpstreamConnectionOwner, RateLimitWaiter, TickFlushing {
    private var context: RequestContext
    private let rateLimit: RateLimitRequest?
    /// A refusal (401/403) held back until `rateLimit` has counted the request; never proxied.
    private let deferredError: GatewayError?
    /// `allowed`, `denied` or `store_unavailable` once the rate limiter answered (access log).
    private(set) var rateLimitDecision: String?
    /// Endpoints, connection, timing: everything upstream of the gateway.
    private(set) var upstream: UpstreamLeg
    /// Strong, not weak (a weak reference costs the responder a side table and slow retains):
    /// `finish` drops it whenever the exchange ends, and the responder drops the exchange.
    private var downstream: DownstreamResponder?
    private var machine: StateMachine<UpstreamConnection>
    /// Why the response happened, once known (the access log's `source`).
    private(set) var source: ResponseSource?
    /// Set for a WebSocket handshake on a `websocket: true` route: a 101 proving it is tunnelled.
    var webSocket: WebSocketHandshake?
    /// The route's `timeouts.stream_idle`, and whether it streams every response (`streaming: true`);
    /// `text/event-stream` responses stream on any route. Kept as configured: converted only for a
    /// streamed response, not once per request.
    var streamIdle: Duration = .seconds(300)
    var streamingRoute = false
    private var streamWatch: StreamIdleWatch?
    /// The `101` of an accepted WebSocket handshake, relayed once its response ends.
    private var acceptedSwitch: HTTPResponseHead?
    /// Set on a cache route's cacheable request; `cacheFill` while this exchange fills the entry.
    private let cache: CacheRequest?
    private var cacheFill: CacheFill?

    init(
        context: RequestContext,
        upstream: UpstreamLeg,
        rateLimit: RateLimitRequest? = nil,
        deferredError: GatewayError? = nil,
        expectsContinue: Bool,
        requestHasBody: Bool,
        downstream: DownstreamResponder,
        cache: CacheRequest? = nil
    ) {
        // The machine first: `context` and `upstream` are moved in by their last use (read after
        // being stored, each was copied whole).
        self.machine = StateMachine(
            requestHasBody: requestHasBody, idempotent: context.method.isIdempotent, expectsContinue: expectsContinue,
            retries: upstream.cluster.retryAttempts(for: context.method)
        )
        self.context = context
        self.upstream = upstream
        self.cache = cache
        self.rateLimit = rateLimit
        self.deferredError = deferredError
        self.downstream = downstream
    }

    /// The pool's: not stored here, where it was a retain and a release per request.
    private var eventLoop: EventLoop { self.upstream.pool.eventLoop }

    // MARK: - Asynchronous filters

    func start() {
        guard let request = self.rateLimit else {
            self.proceed(rateLimitFields: [])
            return
        }
        // Body reads wait while the limiter decides (it may be a Redis round trip).
        if !self.machine.requestComplete { self.downstream?.pauseRequestBody(for: self) }
        let service = request.service
        service.check(request, on: self.eventLoop, for: self)
    }

    /// `RateLimitWaiter`: what the limiter decided for this exchange.
    func rateLimitDecided(_ outcome: RateLimitOutcome, service: RateLimitService) {
        guard self.machine.isAdmitting else { return }
        switch outcome {
        case .allowed(let fields):
            self.rateLimitDecision = "allowed"
            self.proceed(rateLimitFields: fields)
        case .denied(let fields):
            self.rateLimitDecision = "denied"
            self.fail(.rateLimited(fields))
        case .storeUnavailable:
            self.rateLimitDecision = "store_unavailable"
            if service.failOpen { self.proceed(rateLimitFields: []) } else { self.fail(.rateLimiterUnavailable) }
        }
    }

    /// Past the rate limiter: the refusal held back for counting, else the cache or the upstream.
    private func proceed(rateLimitFields: [(String, String)]) {
        if var error = self.deferredError {
            error.headers.append(contentsOf: rateLimitFields)
            self.fail(error)
        } else {
            self.context.addRateLimitFields(rateLimitFields)
            if let cache = self.cache { self.consultCache(cache, coalesce: true) } else { self.startUpstream() }
        }
    }

    // MARK: - Driven by the downstream

    func requestBodyReceived(_ body: ByteBuffer) {
        switch self.machine.requestBodyReceived() {
        case .hold:
            self.upstream.hold(body)
        case .forward(let connection):
            connection.write(.body(.byteBuffer(body)), flush: true)
            if !connection.channel.isWritable { self.downstream?.pauseRequestBody(for: self) }
        case .drop:
            break
        }
    }

    func requestEndReceived() {
        switch self.machine.requestEndReceived() {
        case .forwardEnd(let connection, let armResponseTimer):
            connection.write(.end(nil), flush: true)
            if armResponseTimer { self.upstream.armResponseTimer(connection) }
        case .none:
            break
        }
    }

    /// The client went away or broke the request (body over the limit): drop the upstream side.
    func cancel() {
        if let connection = self.machine.cancel() {
            connection.close()
            self.upstream.release(connection, reusable: false)
        }
        self.finish(.cancelled)
    }

    /// The client socket drained: upstream reads may resume.
    func downstreamWritabilityChanged(isWritable: Bool) {
        guard let connection = self.machine.streamingConnection else { return }
        if isWritable { connection.handler.resumeReads() } else { connection.handler.pauseReads() }
    }

    // MARK: - Upstream leg

    private func startUpstream() {
        let candidates = self.upstream.begin(now: .now())
        switch self.machine.startUpstream(candidates: candidates) {
        case .noCandidates:
            self.fail(.noHealthyUpstream)
        case .connect(let holdBody):
            // Nothing to forward until a connection exists: hold the body back at the socket.
            if holdBody { self.downstream?.pauseRequestBody(for: self) }
            self.connectNext()
        }
    }

    private func connectNext(fresh: Bool = false) {
        let endpoint: UpstreamEndpoint
        switch self.machine.nextEndpoint() {
        case .none: return
        case .noneLeft: return self.fail(.upstreamUnavailable)
        case .candidate(let index): endpoint = self.upstream.endpoint(at: index)
        }
        if !fresh, let connection = self.upstream.takeIdle(endpoint, probeTCPState: !self.machine.resendableOnStaleConnection) {
            endpoint.recordSuccess()
            self.attach(connection, flushAtTickEnd: true)
            return
        }
        self.upstream.open(endpoint).assumeIsolated().whenComplete { result in
            if case .failure = result, self.machine.isFinished { return }
            switch result {
            case .success(let connection):
                endpoint.recordSuccess()
                self.attach(connection, flushAtTickEnd: false)
            case .failure(UpstreamAcquireError.poolExhausted):
                endpoint.stats.error(.poolExhausted)
                self.fail(.upstreamBusy)
            case .failure:
                endpoint.stats.error(.connect)
                endpoint.recordFailure(now: .now())
                self.connectNext()
            }
        }
    }

    /// Writes the request to `connection`. A whole request on an idle connection leaves with the
    /// tick's other writes (`TickFlushes`: the upstream is woken once for all of them). One that
    /// waited for its connection (a connect, or a slot at `max_connections`) goes at once: when
    /// requests queue for slots, the upstream's connections are the bottleneck, and holding a
    /// request until the tick ends leaves one idle that long.
    private func attach(_ connection: UpstreamConnection, flushAtTickEnd: Bool) {
        guard case .writeRequest(let endRequest) = self.machine.connectionReady(connection) else {
            // The client left while we were connecting.
            self.upstream.release(connection, reusable: true)
            return
        }
        connection.handler.owner = self
        self.upstream.write(to: connection, endRequest: endRequest)
        if endRequest && flushAtTickEnd {
            // Until it is flushed, the request counts as unsent.
            self.upstream.unflushed = connection
            self.upstream.pool.flushes.add(self)
            return
        }
        self.flushRequest(to: connection)
    }

    /// Flushes the request written to `connection`, unless the exchange moved on meanwhile: the
    /// client left (the connection was closed with it) or the connection was lost first (the
    /// request is sent again, on another).
    func flushAtTickEnd() {
        guard let connection = self.upstream.unflushed.take() else { return }
        guard self.machine.isAwaitingResponse(on: connection) else { return }
        self.flushRequest(to: connection)
    }

    private func flushRequest(to connection: UpstreamConnection) {
        connection.handler.flush()
        // A flush on the channel's loop writes at once. A head the kernel refused (the upstream was
        // gone) closed the channel, and its `channelInactive` already handed this exchange to
        // `upstreamLost`; a channel that was closed before the write fails it without that event.
        // Either way the held body was kept for a resend. A head still pending may be partly sent:
        // it counts as sent, and a later failure closes the channel the same way.
        switch self.machine.requestWritten(to: connection, channelIsActive: connection.channel.isActive) {
        case .none:
            break
        case .lost:
            self.upstreamLost(.upstreamUnavailable)
        case .sent(let armResponseTimer, let sendContinue, let resumeBody):
            self.upstream.dropHeldBody()
            if armResponseTimer { self.upstream.armResponseTimer(connection) }
            if sendContinue { self.downstream?.sendContinue(for: self) }
            if resumeBody && connection.channel.isWritable { self.downstream?.resumeRequestBody(for: self) }
        }
    }

    // MARK: - UpstreamConnectionOwner

    func upstreamReceivedHead(_ head: UpstreamResponseHead, keepAlive: Bool) {
        self.responseHeadReceived(head, keepAlive: keepAlive)
    }

    func upstreamReceivedBody(_ body: ByteBuffer) {
        guard case .forward(let connection) = self.machine.responseBodyReceived() else {
            return self.upstreamFailed(UpstreamProtocolError())
        }
        self.cacheFill?.responseBody(body)
        guard let downstream = self.downstream else { return }
        self.streamWatch?.touch()
        downstream.sendResponseBody(for: self, body)
        if !downstream.isWritable { connection.handler.pauseReads() }
    }

    func upstreamReceivedEnd() {
        switch self.machine.responseEndReceived() {
        case .finish(let connection, let reusable):
            connection.handler.resumeReads()
            self.upstream.release(connection, reusable: reusable)
            self.cacheFill?.responseEnd(requestMethod: self.context.method)
            self.finish(.completed(flush: false))
        case .tunnel(let connection):
            // The parser stopped after this 101: the connection is the tunnel's from here.
            connection.handler.owner = nil
            self.finish(.tunnelled(self.acceptedSwitch!, connection))
        case .protocolError:
            self.upstreamFailed(UpstreamProtocolError())
        }
    }

    private func responseHeadReceived(_ head: UpstreamResponseHead, keepAlive: Bool) {
        let status = Int(head.status.code)
        let action = self.machine.responseHeadReceived(
            status: status, keepAlive: keepAlive,
            acceptsSwitch: head.status == .switchingProtocols && self.webSocket?.accepts(head.built) == true,
            hasStaleFallback: self.cacheFill?.staleFallback != nil
        )
        switch action {
        case .acceptSwitch(let connection):
            connection.clearDeadline()
            self.upstream.responseHeadArrived(on: connection)
            self.acceptedSwitch = head.built
        case .refuseSwitch:
            self.upstream.status = status
            self.upstreamFailed(UpstreamProtocolError())
        case .protocolError:
            self.upstreamFailed(UpstreamProtocolError())
        case .serveStale(let connection):
            connection.clearDeadline()
            self.upstream.record5xx(connection.endpoint)
            connection.close()
            self.upstream.release(connection, reusable: false)
            _ = self.serveStaleOnError()
        case .forward(let connection):
            connection.clearDeadline()
            let endpoint = connection.endpoint
            if status >= 500 { self.upstream.record5xx(endpoint) } else { endpoint.recordResponseOK() }
            self.upstream.responseHeadArrived(on: connection)
            self.source = .upstream
            self.upstream.status = status
            endpoint.stats.response(status: status, seconds: self.upstream.seconds)
            let forwarded = self.context.forwarded(head)
            if let fill = self.cacheFill {
                fill.responseHead(head.built, requestMethod: self.context.method)
                var (clientHead, framing) = forwarded.built
                clientHead.headers.replaceOrAdd(name: "x-cache", value: "MISS")
                self.downstream?.sendResponseHead(for: self, clientHead, framing: framing)
            } else {
                self.downstream?.sendForwardedResponseHead(for: self, forwarded)
            }
            if self.streamingRoute || head.isEventStream {
                self.streamWatch = StreamIdleWatch(loop: self.eventLoop, idle: .init(self.streamIdle)) { [weak self] in
                    self?.upstreamLost(.upstreamTimeout)
                }
            }
        }
    }

    func upstreamFailed(_ error: Error) {
        self.upstreamLost(error is UpstreamProtocolError ? .badUpstreamResponse : .upstreamUnavailable)
    }

    func upstreamClosed() {
        self.upstreamLost(.upstreamUnavailable)
    }

    func upstreamReadComplete() {
        if self.machine.streamingConnection != nil { self.downstream?.flush(for: self) }
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        guard !self.machine.requestComplete else { return }
        if isWritable { self.downstream?.resumeRequestBody(for: self) } else { self.downstream?.pauseRequestBody(for: self) }
    }

    func upstreamResponseTimedOut() {
        guard let connection = self.machine.responseTimedOut() else { return }
        connection.endpoint.stats.error(.timeout)
        connection.close()
        self.fail(.upstreamTimeout)
    }

    private func upstreamLost(_ error: GatewayError) {
        let sentBefore = self.machine.requestSent
        var servedRequests = false
        if case .awaitingResponse(let connection) = self.machine.state { servedRequests = connection.hasServedRequests }
        let action = self.machine.upstreamLost(error, connectionServedRequests: servedRequests) { self.upstream.takeRetry() }
        switch action {
        case .none:
            break
        case .retryStale(let connection):
            connection.close()
            self.connectNext(fresh: true)
        case .retryElsewhere(let connection):
            connection.close()
            self.upstream.blame(connection.endpoint, for: error, requestSent: sentBefore)
            self.connectNext()
        case .fail(let connection, let answer):
            connection.close()
            self.upstream.blame(connection.endpoint, for: error, requestSent: sentBefore)
            self.fail(answer)
        case .abort(let connection):
            self.source = .upstreamReset
            connection.endpoint.stats.error(.reset)
            connection.close()
            self.finish(.aborted)
        }
    }

    // MARK: - Response cache

    /// A fresh entry answers here; a miss fetches upstream (filling the entry), or waits for the
    /// fetch of the same key already in flight and looks again.
    private func consultCache(_ cache: CacheRequest, coalesce: Bool) {
        switch cache.cache.lookup(cache, coalesce: coalesce, on: self.eventLoop) {
        case .hit(let entry, let age):
            self.serveCached(entry, age: age)
        case .stale(let entry, let age, let refresh):
            self.serveCached(entry, age: age, label: "STALE")
            if let refresh { BackgroundRefresh.start(self.refreshExchange(), fill: refresh) }
        case .fill(let fill):
            self.cacheFill = fill
            guard let shared = cache.cache.shared else { return self.startUpstream() }
            cache.cache.loadShared(fill, from: shared, on: self.eventLoop).assumeIsolated().whenSuccess { found in
                guard self.machine.isAdmitting else { return }
                if let (entry, age) = found { self.serveCached(entry, age: age) } else { self.startUpstream() }
            }
        case .wait(let ready):
            ready.assumeIsolated().whenComplete { _ in
                guard self.machine.isAdmitting else { return }
                self.consultCache(cache, coalesce: false)
            }
        }
    }

    /// The same request again, with nobody to answer: its response only fills the cache.
    private func refreshExchange() -> (BackgroundRefresh) -> RequestExchange {
        { responder in
            let context = RequestContext(
                requestID: self.context.requestID, trace: nil, method: self.context.method,
                clientVersion: self.context.clientVersion, addHSTS: false, responseAdditions: .none
            )
            let upstream = UpstreamLeg(head: self.upstream.head, cluster: self.upstream.cluster, pool: self.upstream.pool)
            return RequestExchange(
                context: context, upstream: upstream, expectsContinue: false, requestHasBody: false, downstream: responder
            )
        }
    }

    /// Starts a background refresh (`BackgroundRefresh`) filling `fill`.
    func startRefresh(_ fill: CacheFill) {
        self.cacheFill = fill
        self.startUpstream()
    }

    /// `stale-if-error`: the upstream failed or answered 5xx; the expired entry answers instead.
    private func serveStaleOnError() -> Bool {
        guard let entry = self.cacheFill?.takeStaleFallback() else { return false }
        self.cacheFill = nil
        self.serveCached(entry, age: entry.age(now: .now()), label: "STALE")
        return true
    }

    private func serveCached(_ entry: CachedResponse, age: Int, label: String = "HIT") {
        // Over before anything is written: what the responder's calls cause cannot reach this
        // exchange's upstream side.
        self.machine.finish()
        guard let downstream = self.downstream else { return self.finish(.cancelled) }
        var (head, framing) = self.context.rewritten(entry.head)
        head.headers.replaceOrAdd(name: "age", value: String(age))
        head.headers.replaceOrAdd(name: "x-cache", value: label)
        downstream.sendResponseHead(for: self, head, framing: framing)
        if !self.context.method.isHEAD, entry.body.readableBytes > 0 { downstream.sendResponseBody(for: self, entry.body) }
        self.finish(.completed(flush: true))
    }

    // MARK: - The end

    private func fail(_ error: GatewayError) {
        if self.serveStaleOnError() { return }
        var error = error
        error.trace = self.context.trace
        self.source = error.source
        self.finish(.failed(error))
    }

    /// How an exchange ended.
    private enum Ending {
        /// The response went out whole (the upstream's or the cache's); `flush`: at once.
        case completed(flush: Bool)
        /// A gateway-made response (502/503/504, 429, a held-back 401/403) answers instead.
        case failed(GatewayError)
        /// The response had started and cannot be completed: the client connection goes.
        case aborted
        /// The upstream accepted the WebSocket handshake: the connection becomes the client's tunnel.
        case tunnelled(HTTPResponseHead, UpstreamConnection)
        /// The client went away or broke the request: nobody to tell.
        case cancelled
    }

    /// Every end of the exchange comes here, once: it lets go of the upstream side (the
    /// endpoint's count, the held body, the stream-idle watch, the cache fill) and of its
    /// responder, and tells the responder how it ended — each of those calls is where the
    /// responder logs the request.
    private func finish(_ ending: Ending) {
        self.machine.finish()
        if let watch = self.streamWatch.take() { watch.cancel() }
        self.upstream.releaseOutstanding()
        self.upstream.dropHeldBody()
        self.cacheFill = nil
        // Taken first: each `self.downstream?` was a retain and a release; nothing these calls
        // cause reaches this exchange's downstream again (it is finished).
        guard let downstream = self.downstream.take() else { return }
        switch ending {
        case .completed(let flush):
            downstream.sendResponseEnd(for: self)
            if flush { downstream.flush(for: self) }
            downstream.exchangeFinished(for: self)
        case .failed(let error):
            downstream.sendErrorResponse(for: self, error)
        case .aborted:
            downstream.abortResponse(for: self)
        case .tunnelled(let head, let connection):
            downstream.upgradeToTunnel(for: self, head, upstream: connection)
        case .cancelled:
            break
        }
    }
}

/// The upstream sent response parts in an order HTTP/1.1 does not allow.
struct UpstreamProtocolError: Error {}

extension HTTPMethod {
    /// RFC 9110 §9.2.2: sending the request twice has the effect of sending it once.
    fileprivate var isIdempotent: Bool {
        switch self {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: return true
        default: return false
        }
    }
}
