import NIOCore
import NIOHTTP1

/// The client side of a proxied request, whatever its protocol (an HTTP/1.1 connection or an HTTP/2 stream).
/// The exchange drives it; all calls happen on the client connection's event loop. Every
/// call names its exchange: a responder that serves requests one after another (HTTP/1.1
/// pipelining) ignores calls from an exchange that is no longer its current one.
protocol DownstreamResponder: AnyObject {
    var isWritable: Bool { get }
    /// `100 Continue` for a client that asked for it, once the request is known to be forwarded.
    func sendContinue(for exchange: ProxyExchange)
    func sendResponseHead(for exchange: ProxyExchange, _ head: HTTPResponseHead, framing: HeaderRewriter.ResponseFraming)
    /// The upstream's head, rewritten for the client when it is written (an HTTP/1.1 connection
    /// writes its bytes in one pass); by default built and passed to `sendResponseHead`.
    func sendForwardedResponseHead(for exchange: ProxyExchange, _ head: ForwardedResponseHead)
    func sendResponseBody(for exchange: ProxyExchange, _ body: ByteBuffer)
    /// Response parts are written unflushed; one flush per upstream read coalesces head and body
    /// into one TLS record and one syscall.
    func flush(for exchange: ProxyExchange)
    func sendResponseEnd(for exchange: ProxyExchange)
    /// A gateway-made response (502/503/504) in place of the upstream's. It ends the exchange: no
    /// `exchangeFinished` follows.
    func sendErrorResponse(for exchange: ProxyExchange, _ error: GatewayError)
    /// Stop and restart reading the request body (upstream backpressure).
    func pauseRequestBody(for exchange: ProxyExchange)
    func resumeRequestBody(for exchange: ProxyExchange)
    /// The response started but cannot be completed: the client connection must be torn down.
    func abortResponse(for exchange: ProxyExchange)
    /// The exchange is over; the responder may serve its next request.
    func exchangeFinished(for exchange: ProxyExchange)
    /// The upstream accepted `exchange.webSocket`'s handshake: `connection` is the responder's to tunnel.
    func upgradeToTunnel(for exchange: ProxyExchange, _ head: HTTPResponseHead, upstream connection: UpstreamConnection)
}

extension DownstreamResponder {
    func sendForwardedResponseHead(for exchange: ProxyExchange, _ head: ForwardedResponseHead) {
        let (built, framing) = head.built
        self.sendResponseHead(for: exchange, built, framing: framing)
    }
}

/// One request proxied to an upstream, from picking an endpoint to the last response byte.
/// Streams both ways under backpressure: request body reads pause while the upstream socket is
/// full, upstream reads pause while the client socket is full. What to do on each event is
/// `StateMachine`'s decision (`ProxyExchange+StateMachine.swift`); this class does the I/O.
final class ProxyExchange: UpstreamConnectionOwner, RateLimitWaiter, TickFlushing {
    private let upstreamHead: UpstreamRequestHead
    private let requestMethod: HTTPMethod
    private let clientVersion: HTTPVersion
    private let requestID: String
    private let addHSTS: Bool
    private var responseAdditions: ResponseAdditions
    private let rateLimit: RateLimitRequest?
    /// A refusal (401/403) held back until `rateLimit` has counted the request; never proxied.
    private let deferredError: GatewayError?
    /// `allowed`, `denied` or `store_unavailable` once the rate limiter answered (access log).
    private(set) var rateLimitDecision: String?
    private let cluster: UpstreamCluster
    private let pool: UpstreamConnectionPool
    /// The connection a whole request was written to, waiting for the end of the tick's flush.
    private var unflushed: UpstreamConnection?
    /// Strong, not weak (a weak reference costs the responder a side table and slow retains):
    /// `detach()` drops it whenever the exchange ends, and the responder drops the exchange.
    private var downstream: DownstreamResponder?
    /// The pool's: not stored here, where it was a retain and a release per request.
    private var eventLoop: EventLoop { self.pool.eventLoop }

    private var machine: StateMachine<UpstreamConnection>
    private var candidates: [UpstreamEndpoint] = []
    /// Body parts received before the upstream connection was ready (bounded: reads pause), kept
    /// until the request is upstream so that a request none of which was sent can go again.
    private var pendingBody: [ByteBuffer] = []
    private var outstandingEndpoint: UpstreamEndpoint?
    private var upstreamStart: NIODeadline?
    /// From writing the request head upstream to its response head (nil until then).
    private(set) var upstreamSeconds: Double?
    /// The endpoint that served (or was last tried for) this request.
    private(set) var endpointKey: String?
    /// Why the response happened, once known (the access log's `source`).
    private(set) var source: ResponseSource?
    /// The upstream's response status, once its head arrived.
    private(set) var upstreamStatus: Int?
    /// The request's trace, for the `trace_id` of the errors this exchange answers with.
    private let trace: TraceContext?
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
        upstreamHead: UpstreamRequestHead,
        requestMethod: HTTPMethod,
        clientVersion: HTTPVersion,
        requestID: String,
        addHSTS: Bool,
        responseAdditions: ResponseAdditions = .none,
        rateLimit: RateLimitRequest? = nil,
        deferredError: GatewayError? = nil,
        expectsContinue: Bool,
        requestHasBody: Bool,
        cluster: UpstreamCluster,
        pool: UpstreamConnectionPool,
        downstream: DownstreamResponder,
        trace: TraceContext? = nil,
        cache: CacheRequest? = nil
    ) {
        self.trace = trace
        self.cache = cache
        self.upstreamHead = upstreamHead
        self.requestMethod = requestMethod
        self.clientVersion = clientVersion
        self.requestID = requestID
        self.addHSTS = addHSTS
        self.responseAdditions = responseAdditions
        self.rateLimit = rateLimit
        self.deferredError = deferredError
        self.cluster = cluster
        self.pool = pool
        self.downstream = downstream
        self.machine = StateMachine(
            requestHasBody: requestHasBody, idempotent: requestMethod.isIdempotent, expectsContinue: expectsContinue,
            retries: cluster.retryAttempts(for: requestMethod)
        )
    }

    // MARK: - Driven by the downstream

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

    /// Past the rate limiter: the refusal held back for counting, else the upstream.
    private func proceed(rateLimitFields: [(String, String)]) {
        if var error = self.deferredError {
            error.headers.append(contentsOf: rateLimitFields)
            self.fail(error)
        } else {
            if self.responseAdditions.extraHeaders.isEmpty {
                self.responseAdditions.extraHeaders = rateLimitFields  // shared, not copied
            } else {
                self.responseAdditions.extraHeaders.append(contentsOf: rateLimitFields)
            }
            if let cache = self.cache { self.consultCache(cache, coalesce: true) } else { self.startUpstream() }
        }
    }

    private func startUpstream() {
        self.cluster.requestStarted()
        self.candidates = self.cluster.candidates(now: .now())
        switch self.machine.startUpstream(candidates: self.candidates.count) {
        case .noCandidates:
            self.fail(.noHealthyUpstream)
        case .connect(let holdBody):
            // Nothing to forward until a connection exists: hold the body back at the socket.
            if holdBody { self.downstream?.pauseRequestBody(for: self) }
            self.connectNext()
        }
    }

    func requestBodyReceived(_ body: ByteBuffer) {
        switch self.machine.requestBodyReceived() {
        case .hold:
            self.pendingBody.append(body)
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
            if armResponseTimer { self.armResponseTimer(connection) }
        case .none:
            break
        }
    }

    /// The client went away or broke the request (body over the limit): drop the upstream side.
    func cancel() {
        if let connection = self.machine.cancel() {
            self.streamWatch?.cancel()
            self.releaseOutstanding()
            connection.close()
            self.pool.release(connection, reusable: false, timeouts: self.cluster.timeouts)
        }
        self.downstream = nil
    }

    /// The client socket drained: upstream reads may resume.
    func downstreamWritabilityChanged(isWritable: Bool) {
        guard let connection = self.machine.streamingConnection else { return }
        if isWritable { connection.handler.resumeReads() } else { connection.handler.pauseReads() }
    }

    // MARK: - Connecting

    private func connectNext(fresh: Bool = false) {
        let endpoint: UpstreamEndpoint
        switch self.machine.nextEndpoint() {
        case .none: return
        case .noneLeft: return self.fail(.upstreamUnavailable)
        case .candidate(let index): endpoint = self.candidates[index]
        }
        if !fresh, let connection = self.pool.takeIdle(endpoint, probeTCPState: !self.machine.resendableOnStaleConnection) {
            endpoint.recordSuccess()
            self.attach(connection, flushAtTickEnd: true)
            return
        }
        self.pool.open(endpoint, settings: self.cluster.settings).assumeIsolated().whenComplete { result in
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
            self.pool.release(connection, reusable: true, timeouts: self.cluster.timeouts)
            return
        }
        connection.handler.owner = self
        self.releaseOutstanding()
        self.outstandingEndpoint = connection.endpoint
        connection.endpoint.outstanding.add(1, ordering: .relaxed)
        // The iteration's stamp, like the end: both ends of the upstream time from the same clock.
        self.upstreamStart = connection.handler.tickSlot.now()
        self.endpointKey = connection.endpoint.key
        connection.writeHead(self.upstreamHead, flush: false)
        for body in self.pendingBody { connection.write(.body(.byteBuffer(body)), flush: false) }
        if endRequest { connection.write(.end(nil), flush: false) }
        if endRequest && flushAtTickEnd {
            // Until it is flushed, the request counts as unsent.
            self.unflushed = connection
            self.pool.flushes.add(self)
            return
        }
        self.flushRequest(to: connection)
    }

    /// Flushes the request written to `connection`, unless the exchange moved on meanwhile: the
    /// client left (the connection was closed with it) or the connection was lost first (the
    /// request is sent again, on another).
    func flushAtTickEnd() {
        guard let connection = self.unflushed.take() else { return }
        guard self.machine.isAwaitingResponse(on: connection) else { return }
        self.flushRequest(to: connection)
    }

    private func flushRequest(to connection: UpstreamConnection) {
        connection.handler.flush()
        // A flush on the channel's loop writes at once. A head the kernel refused (the upstream was
        // gone) closed the channel, and its `channelInactive` already handed this exchange to
        // `upstreamLost`; a channel that was closed before the write fails it without that event.
        // Either way `pendingBody` was kept for a resend. A head still pending may be partly sent:
        // it counts as sent, and a later failure closes the channel the same way.
        switch self.machine.requestWritten(to: connection, channelIsActive: connection.channel.isActive) {
        case .none:
            break
        case .lost:
            self.upstreamLost(.upstreamUnavailable)
        case .sent(let armResponseTimer, let sendContinue, let resumeBody):
            self.pendingBody.removeAll()
            if armResponseTimer { self.armResponseTimer(connection) }
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
            self.streamWatch?.cancel()
            self.releaseOutstanding()
            connection.handler.resumeReads()
            self.pool.release(connection, reusable: reusable, timeouts: self.cluster.timeouts)
            self.cacheFill?.responseEnd(requestMethod: self.requestMethod)
            self.cacheFill = nil
            // Taken first: each `self.downstream?` was a retain and a release; nothing these calls
            // cause reaches this exchange's downstream again (it is finished).
            let downstream = self.downstream.take()
            downstream?.sendResponseEnd(for: self)
            downstream?.exchangeFinished(for: self)
        case .tunnel(let connection):
            // The parser stopped after this 101: the connection is the tunnel's from here.
            self.releaseOutstanding()
            connection.handler.owner = nil
            let downstream = self.downstream
            self.downstream = nil
            downstream?.upgradeToTunnel(for: self, self.acceptedSwitch!, upstream: connection)
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
            self.recordUpstreamSeconds(connection)
            self.acceptedSwitch = head.built
        case .refuseSwitch:
            self.upstreamStatus = status
            self.upstreamFailed(UpstreamProtocolError())
        case .protocolError:
            self.upstreamFailed(UpstreamProtocolError())
        case .serveStale(let connection):
            connection.clearDeadline()
            self.record5xx(connection.endpoint)
            connection.close()
            self.pool.release(connection, reusable: false, timeouts: self.cluster.timeouts)
            _ = self.serveStaleOnError()
        case .forward(let connection):
            connection.clearDeadline()
            let endpoint = connection.endpoint
            if status >= 500 { self.record5xx(endpoint) } else { endpoint.recordResponseOK() }
            self.recordUpstreamSeconds(connection)
            self.source = .upstream
            self.upstreamStatus = status
            endpoint.stats.response(status: status, seconds: self.upstreamSeconds)
            let forwarded = ForwardedResponseHead(
                upstream: head, requestMethod: self.requestMethod, clientVersion: self.clientVersion,
                requestID: self.requestID, addHSTS: self.addHSTS, additions: self.responseAdditions
            )
            if let fill = self.cacheFill {
                fill.responseHead(head.built, requestMethod: self.requestMethod)
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

    /// Until the loop iteration that read the head began: the gateway's own work in that iteration is not the upstream's.
    private func recordUpstreamSeconds(_ connection: UpstreamConnection) {
        guard let start = self.upstreamStart else { return }
        self.upstreamSeconds = Double(max(0, (connection.handler.tickSlot.now() - start).nanoseconds)) / 1e9
    }

    private func record5xx(_ endpoint: UpstreamEndpoint) {
        endpoint.record5xx(threshold: self.cluster.settings.consecutive5xxToEject, base: self.cluster.settings.baseEjectionTime, now: .now())
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
    private func refreshExchange() -> (BackgroundRefresh) -> ProxyExchange {
        { responder in
            ProxyExchange(
                upstreamHead: self.upstreamHead, requestMethod: self.requestMethod, clientVersion: self.clientVersion,
                requestID: self.requestID, addHSTS: false, expectsContinue: false, requestHasBody: false,
                cluster: self.cluster, pool: self.pool, downstream: responder
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
        self.machine.finish()
        self.releaseOutstanding()
        self.pendingBody.removeAll()
        self.serveCached(entry, age: entry.age(now: .now()), label: "STALE")
        return true
    }

    private func serveCached(_ entry: CachedResponse, age: Int, label: String = "HIT") {
        self.machine.finish()
        guard let downstream = self.downstream else { return }
        let (rewritten, framing) = HeaderRewriter.clientResponse(
            entry.head, requestMethod: self.requestMethod, clientVersion: self.clientVersion,
            requestID: self.requestID, addHSTS: self.addHSTS, additions: self.responseAdditions
        )
        var head = rewritten
        head.headers.replaceOrAdd(name: "age", value: String(age))
        head.headers.replaceOrAdd(name: "x-cache", value: label)
        downstream.sendResponseHead(for: self, head, framing: framing)
        if !self.requestMethod.isHEAD, entry.body.readableBytes > 0 { downstream.sendResponseBody(for: self, entry.body) }
        downstream.sendResponseEnd(for: self)
        downstream.flush(for: self)
        downstream.exchangeFinished(for: self)
        self.downstream = nil
    }

    // MARK: - Failures

    private func upstreamLost(_ error: GatewayError) {
        let sentBefore = self.machine.requestSent
        var servedRequests = false
        if case .awaitingResponse(let connection) = self.machine.state { servedRequests = connection.hasServedRequests }
        let action = self.machine.upstreamLost(error, connectionServedRequests: servedRequests) { self.cluster.takeRetry() }
        switch action {
        case .none:
            break
        case .retryStale(let connection):
            connection.close()
            self.connectNext(fresh: true)
        case .retryElsewhere(let connection):
            connection.close()
            self.blame(connection.endpoint, for: error, requestSent: sentBefore)
            self.connectNext()
        case .fail(let connection, let answer):
            connection.close()
            self.blame(connection.endpoint, for: error, requestSent: sentBefore)
            self.fail(answer)
        case .abort(let connection):
            self.streamWatch?.cancel()
            self.source = .upstreamReset
            connection.endpoint.stats.error(.reset)
            self.releaseOutstanding()
            connection.close()
            self.downstream?.abortResponse(for: self)
            self.downstream = nil
        }
    }

    private func blame(_ endpoint: UpstreamEndpoint, for error: GatewayError, requestSent: Bool) {
        self.record5xx(endpoint)
        endpoint.stats.error(error == .upstreamUnavailable ? (requestSent ? .reset : .connect) : .protocol)
    }

    /// `response_timeout` counts from the moment the whole request is upstream (as Envoy's route
    /// timeout does), so a long upload is not cut off by it.
    private func armResponseTimer(_ connection: UpstreamConnection) {
        connection.expectResponse(self.cluster.timeouts)
    }

    func upstreamResponseTimedOut() {
        guard let connection = self.machine.responseTimedOut() else { return }
        connection.endpoint.stats.error(.timeout)
        connection.close()
        self.fail(.upstreamTimeout)
    }

    private func releaseOutstanding() {
        // Taken, not read and then cleared: one release instead of a retain and two releases.
        self.outstandingEndpoint.take()?.outstanding.subtract(1, ordering: .relaxed)
    }

    private func fail(_ error: GatewayError) {
        if self.serveStaleOnError() { return }
        self.machine.finish()
        self.cacheFill = nil
        self.releaseOutstanding()
        self.pendingBody.removeAll()
        var error = error
        error.trace = self.trace
        self.source = error.source
        self.downstream?.sendErrorResponse(for: self, error)
        self.downstream = nil
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
