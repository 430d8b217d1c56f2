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

/// One request proxied to an upstream, from picking an endpoint to the last response byte.
/// Streams both ways under backpressure: request body reads pause while the upstream socket is
/// full, upstream reads pause while the client socket is full.
final class ProxyExchange: UpstreamConnectionOwner {
    private enum State {
        /// Waiting for a pooled or new upstream connection.
        case connecting
        /// Request head written; waiting for the response head.
        case awaitingResponse(UpstreamConnection)
        case streamingResponse(UpstreamConnection)
        case finished
    }

    private let upstreamHead: HTTPRequestHead
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
    private let expectsContinue: Bool
    private let cluster: UpstreamCluster
    private let pool: UpstreamConnectionPool
    /// Strong, not weak (a weak reference costs the responder a side table and slow retains):
    /// `detach()` drops it whenever the exchange ends, and the responder drops the exchange.
    private var downstream: DownstreamResponder?
    private let eventLoop: EventLoop

    private var state: State = .connecting
    private var candidates: [UpstreamEndpoint] = []
    private var nextCandidate = 0
    /// Body parts received before the upstream connection was ready (bounded: reads pause).
    private var pendingBody: [ByteBuffer] = []
    private var requestComplete = false
    private var requestBodyStarted = false

    /// Sending the request again is safe when it is idempotent (RFC 9110 §9.2.2) and has no body
    /// or none has started (a streamed body is not kept).
    private var resendableOnStaleConnection: Bool {
        guard self.requestComplete && !self.requestBodyStarted else { return false }
        switch self.requestMethod {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: return true
        default: return false
        }
    }
    private var responseKeepAlive = true
    private var retriedStaleConnection = false
    /// Set once the head's write was not refused whole: from then on the upstream may act on the
    /// request, so a non-idempotent one is never sent again.
    private var requestSent = false
    private var retriesLeft: Int
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
    /// `text/event-stream` responses stream on any route.
    var streamIdle: TimeAmount = .minutes(5)
    var streamingRoute = false
    private var streamWatch: StreamIdleWatch?
    private var acceptedSwitch: HTTPResponseHead?
    /// Set on a cache route's cacheable request; `cacheFill` while this exchange fills the entry.
    private let cache: CacheRequest?
    private var cacheFill: CacheFill?

    init(
        upstreamHead: HTTPRequestHead,
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
        self.expectsContinue = expectsContinue
        self.requestComplete = !requestHasBody
        self.cluster = cluster
        self.pool = pool
        self.downstream = downstream
        self.eventLoop = pool.eventLoop
        self.retriesLeft = cluster.settings.retryMethods.contains(requestMethod.rawValue) ? cluster.settings.retryAttempts : 0
    }

    // MARK: - Driven by the downstream

    func start() {
        guard let request = self.rateLimit else {
            self.proceed(rateLimitFields: [])
            return
        }
        // Body reads wait while the limiter decides (it may be a Redis round trip).
        if !self.requestComplete { self.downstream?.pauseRequestBody(for: self) }
        let service = request.service
        service.check(request, on: self.eventLoop).assumeIsolated().whenSuccess { outcome in
            guard case .connecting = self.state else { return }
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
        guard !self.candidates.isEmpty else {
            self.fail(.noHealthyUpstream)
            return
        }
        if !self.requestComplete {
            // Nothing to forward until a connection exists: hold the body back at the socket.
            self.downstream?.pauseRequestBody(for: self)
        }
        self.connectNext()
    }

    func requestBodyReceived(_ body: ByteBuffer) {
        self.requestBodyStarted = true
        switch self.state {
        case .connecting:
            self.pendingBody.append(body)
        case .awaitingResponse(let connection), .streamingResponse(let connection):
            connection.write(.body(.byteBuffer(body)), flush: true)
            if !connection.channel.isWritable { self.downstream?.pauseRequestBody(for: self) }
        case .finished:
            break
        }
    }

    func requestEndReceived() {
        self.requestComplete = true
        switch self.state {
        case .awaitingResponse(let connection):
            connection.write(.end(nil), flush: true)
            self.armResponseTimer(connection)
        case .streamingResponse(let connection):
            connection.write(.end(nil), flush: true)
        case .connecting, .finished:
            break
        }
    }

    /// The client went away or broke the request (body over the limit): drop the upstream side.
    func cancel() {
        switch self.state {
        case .connecting:
            self.state = .finished
        case .awaitingResponse(let connection), .streamingResponse(let connection):
            self.streamWatch?.cancel()
            self.state = .finished
            self.releaseOutstanding()
            connection.close()
            self.pool.release(connection, reusable: false, settings: self.cluster.settings)
        case .finished:
            break
        }
        self.downstream = nil
    }

    /// The client socket drained: upstream reads may resume.
    func downstreamWritabilityChanged(isWritable: Bool) {
        guard case .streamingResponse(let connection) = self.state else { return }
        if isWritable { connection.handler.resumeReads() } else { connection.handler.pauseReads() }
    }

    // MARK: - Connecting

    private func connectNext(fresh: Bool = false) {
        guard case .connecting = self.state else { return }
        guard self.nextCandidate < self.candidates.count else {
            self.fail(.upstreamUnavailable)
            return
        }
        let endpoint = self.candidates[self.nextCandidate]
        self.nextCandidate += 1
        if !fresh, let connection = self.pool.takeIdle(endpoint, probeTCPState: !self.resendableOnStaleConnection) {
            endpoint.recordSuccess()
            self.attach(connection)
            return
        }
        self.pool.open(endpoint, settings: self.cluster.settings).assumeIsolated().whenComplete { result in
            if case .failure = result, case .finished = self.state { return }
            switch result {
            case .success(let connection):
                endpoint.recordSuccess()
                self.attach(connection)
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

    private func attach(_ connection: UpstreamConnection) {
        guard case .connecting = self.state else {
            // The client left while we were connecting.
            self.pool.release(connection, reusable: true, settings: self.cluster.settings)
            return
        }
        self.state = .awaitingResponse(connection)
        connection.handler.owner = self
        self.releaseOutstanding()
        self.outstandingEndpoint = connection.endpoint
        connection.endpoint.outstanding.add(1, ordering: .relaxed)
        self.upstreamStart = .now()
        self.endpointKey = connection.endpoint.key
        self.requestSent = false
        connection.write(.head(self.upstreamHead), flush: false)
        for body in self.pendingBody { connection.write(.body(.byteBuffer(body)), flush: false) }
        if self.requestComplete { connection.write(.end(nil), flush: false) }
        connection.channel.flush()
        // A flush on the channel's loop writes at once. A head the kernel refused (the upstream was
        // gone) closed the channel, and its `channelInactive` already handed this exchange to
        // `upstreamLost`; a channel that was closed before the write fails it without that event.
        // Either way `pendingBody` was kept for a resend. A head still pending may be partly sent:
        // it counts as sent, and a later failure closes the channel the same way.
        guard case .awaitingResponse(let current) = self.state, current === connection else { return }
        guard connection.channel.isActive else {
            self.upstreamLost(.upstreamUnavailable)
            return
        }
        self.requestSent = true
        self.pendingBody.removeAll()
        if self.requestComplete { self.armResponseTimer(connection) }
        if !self.requestComplete {
            if self.expectsContinue && !self.requestBodyStarted { self.downstream?.sendContinue(for: self) }
            if connection.channel.isWritable { self.downstream?.resumeRequestBody(for: self) }
        }
    }

    // MARK: - UpstreamConnectionOwner

    func upstreamReceived(_ part: HTTPClientResponsePart) {
        switch (self.state, part) {
        case (.awaitingResponse(let connection), .head(let head)) where head.status == .switchingProtocols && self.webSocket?.accepts(head) == true:
            connection.clearDeadline()
            if let start = self.upstreamStart { self.upstreamSeconds = Double((NIODeadline.now() - start).nanoseconds) / 1e9 }
            self.acceptedSwitch = head
            self.state = .streamingResponse(connection)
        case (.streamingResponse(let connection), .end) where self.acceptedSwitch != nil:
            // The decoder stopped after this 101: the connection is the tunnel's from here.
            self.state = .finished
            self.releaseOutstanding()
            connection.handler.owner = nil
            let downstream = self.downstream
            self.downstream = nil
            downstream?.upgradeToTunnel(for: self, self.acceptedSwitch!, upstream: connection)
        case (.awaitingResponse, .head(let head)) where head.status == .switchingProtocols:
            // Upgrade is hop-by-hop and never forwarded, so the upstream was not asked to switch:
            // relaying the 101 would leave the client on a protocol nobody speaks at this hop.
            self.upstreamStatus = Int(head.status.code)
            self.upstreamFailed(UpstreamProtocolError())
        case (.awaitingResponse(let connection), .head(let head)) where head.status.code >= 500 && self.cacheFill?.staleFallback != nil:
            connection.clearDeadline()
            connection.endpoint.record5xx(
                threshold: self.cluster.settings.consecutive5xxToEject, base: self.cluster.settings.baseEjectionTime, now: .now()
            )
            connection.close()
            self.pool.release(connection, reusable: false, settings: self.cluster.settings)
            _ = self.serveStaleOnError()
        case (.awaitingResponse(let connection), .head(let head)):
            connection.clearDeadline()
            self.state = .streamingResponse(connection)
            self.responseKeepAlive = head.isKeepAlive
            if head.status.code >= 500 {
                connection.endpoint.record5xx(
                    threshold: self.cluster.settings.consecutive5xxToEject, base: self.cluster.settings.baseEjectionTime,
                    now: .now()
                )
            } else {
                connection.endpoint.recordResponseOK()
            }
            if let start = self.upstreamStart { self.upstreamSeconds = Double((NIODeadline.now() - start).nanoseconds) / 1e9 }
            self.source = .upstream
            self.upstreamStatus = Int(head.status.code)
            connection.endpoint.stats.response(status: Int(head.status.code), seconds: self.upstreamSeconds)
            let (rewrittenHead, framing) = HeaderRewriter.clientResponse(
                head,
                requestMethod: self.requestMethod,
                clientVersion: self.clientVersion,
                requestID: self.requestID,
                addHSTS: self.addHSTS,
                additions: self.responseAdditions
            )
            var clientHead = rewrittenHead
            if let fill = self.cacheFill {
                fill.responseHead(head, requestMethod: self.requestMethod)
                clientHead.headers.replaceOrAdd(name: "x-cache", value: "MISS")
            }
            self.downstream?.sendResponseHead(for: self, clientHead, framing: framing)
            if self.streamingRoute || head.headers.first(name: "content-type")?.hasPrefix("text/event-stream") == true {
                self.streamWatch = StreamIdleWatch(loop: self.eventLoop, idle: self.streamIdle) { [weak self] in
                    self?.upstreamLost(.upstreamTimeout)
                }
            }
        case (.streamingResponse(let connection), .body(let body)):
            self.cacheFill?.responseBody(body)
            guard let downstream = self.downstream else { return }
            self.streamWatch?.touch()
            downstream.sendResponseBody(for: self, body)
            if !downstream.isWritable { connection.handler.pauseReads() }
        case (.streamingResponse(let connection), .end):
            self.streamWatch?.cancel()
            self.state = .finished
            self.releaseOutstanding()
            connection.handler.resumeReads()
            let reusable = self.responseKeepAlive && self.requestComplete
            self.pool.release(connection, reusable: reusable, settings: self.cluster.settings)
            self.cacheFill?.responseEnd(requestMethod: self.requestMethod)
            self.cacheFill = nil
            self.downstream?.sendResponseEnd(for: self)
            self.downstream?.exchangeFinished(for: self)
            self.downstream = nil
        default:
            // A response part out of order: the upstream broke HTTP framing.
            self.upstreamFailed(UpstreamProtocolError())
        }
    }

    func upstreamFailed(_ error: Error) {
        self.upstreamLost(error is HTTPParserError || error is UpstreamProtocolError ? .badUpstreamResponse : .upstreamUnavailable)
    }

    func upstreamClosed() {
        self.upstreamLost(.upstreamUnavailable)
    }

    func upstreamReadComplete() {
        if case .streamingResponse = self.state { self.downstream?.flush(for: self) }
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        guard !self.requestComplete else { return }
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
                guard case .connecting = self.state else { return }
                if let (entry, age) = found { self.serveCached(entry, age: age) } else { self.startUpstream() }
            }
        case .wait(let ready):
            ready.assumeIsolated().whenComplete { _ in
                guard case .connecting = self.state else { return }
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
        self.state = .finished
        self.releaseOutstanding()
        self.pendingBody.removeAll()
        self.serveCached(entry, age: entry.age(now: .now()), label: "STALE")
        return true
    }

    private func serveCached(_ entry: CachedResponse, age: Int, label: String = "HIT") {
        self.state = .finished
        guard let downstream = self.downstream else { return }
        let (rewritten, framing) = HeaderRewriter.clientResponse(
            entry.head, requestMethod: self.requestMethod, clientVersion: self.clientVersion,
            requestID: self.requestID, addHSTS: self.addHSTS, additions: self.responseAdditions
        )
        var head = rewritten
        head.headers.replaceOrAdd(name: "age", value: String(age))
        head.headers.replaceOrAdd(name: "x-cache", value: label)
        downstream.sendResponseHead(for: self, head, framing: framing)
        if self.requestMethod != .HEAD, entry.body.readableBytes > 0 { downstream.sendResponseBody(for: self, entry.body) }
        downstream.sendResponseEnd(for: self)
        downstream.flush(for: self)
        downstream.exchangeFinished(for: self)
        self.downstream = nil
    }

    // MARK: - Failures

    private func upstreamLost(_ error: GatewayError) {
        switch self.state {
        case .awaitingResponse(let connection):
            connection.close()
            // Sending a request again is safe when none of it was written (its body parts are
            // still in `pendingBody`), or when it is idempotent (RFC 9110 §9.2.2) and bodiless
            // (a streamed body was not kept). A non-idempotent request the upstream may have
            // received is never sent twice: it could book twice.
            let resendable = !self.requestSent || self.resendableOnStaleConnection
            // A reused keep-alive connection that dies before any response byte was most likely
            // closed by the upstream while idle: one free retry on a fresh connection.
            if resendable, connection.hasServedRequests, !self.retriedStaleConnection, error == .upstreamUnavailable {
                self.retriedStaleConnection = true
                self.state = .connecting
                self.nextCandidate = max(0, self.nextCandidate - 1)
                self.connectNext(fresh: true)
                return
            }
            connection.endpoint.record5xx(
                threshold: self.cluster.settings.consecutive5xxToEject, base: self.cluster.settings.baseEjectionTime, now: .now()
            )
            connection.endpoint.stats.error(error == .upstreamUnavailable ? (self.requestSent ? .reset : .connect) : .protocol)
            // A request of `retries.methods` that got no response byte may go to another endpoint,
            // within the cluster's retry budget.
            if resendable, self.retriesLeft > 0,
                self.nextCandidate < self.candidates.count, self.cluster.takeRetry()
            {
                self.retriesLeft -= 1
                self.state = .connecting
                self.connectNext()
                return
            }
            var error = error
            // Sent and then lost: the upstream reset it, which `upstream_unavailable` alone does not tell.
            if error == .upstreamUnavailable && self.requestSent { error.sourceOverride = .upstreamReset }
            self.fail(error)
        case .streamingResponse(let connection):
            self.streamWatch?.cancel()
            self.state = .finished
            self.source = .upstreamReset
            connection.endpoint.stats.error(.reset)
            self.releaseOutstanding()
            connection.close()
            self.downstream?.abortResponse(for: self)
            self.downstream = nil
        case .connecting, .finished:
            break
        }
    }

    /// `response_timeout` counts from the moment the whole request is upstream (as Envoy's route
    /// timeout does), so a long upload is not cut off by it.
    private func armResponseTimer(_ connection: UpstreamConnection) {
        connection.expectResponse(self.cluster.settings)
    }

    func upstreamResponseTimedOut() {
        guard case .awaitingResponse(let connection) = self.state else { return }
        connection.endpoint.stats.error(.timeout)
        connection.close()
        self.fail(.upstreamTimeout)
    }

    private func releaseOutstanding() {
        self.outstandingEndpoint?.outstanding.subtract(1, ordering: .relaxed)
        self.outstandingEndpoint = nil
    }

    private func fail(_ error: GatewayError) {
        if self.serveStaleOnError() { return }
        self.state = .finished
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
