import NIOCore
import NIOHTTP1

/// The protocol-independent start of every request, HTTP/1.1 or HTTP/2: validate framing, run the
/// pipeline phases (identify → route → CORS → authenticate), and either produce the local response
/// or the `RequestExchange` that will forward it. The codecs only translate wire events into calls
/// here and responses back into their framing, so a policy is enforced in exactly one place.
struct RequestDispatch {
    enum Outcome {
        /// Answer with this; `closeConnection` is set when the framing can no longer be trusted.
        case respond(LocalResponse)
        /// Start the exchange once the current read has been decoded.
        case proxy(RequestExchange)
    }

    var outcome: Outcome
    var requestID: String
    /// CORS fields etc. for every response to this request (including later 413/502/504); the
    /// codec applies them to local responses, `RequestExchange` to proxied ones.
    var responseAdditions: ResponseAdditions
    var hasBody: Bool

    /// - Parameters:
    ///   - streamEnded: HTTP/2 only: whether END_STREAM came with the headers (no body follows).
    ///     HTTP/1.1 passes nil: its framing comes from the head.
    ///   - runtime: the config snapshot the whole request runs under (nil: `services.runtime`).
    ///   - record: set to the request's record, with everything the pipeline decided (request id,
    ///     route, client, token refusal, subject, host, trace); the codec fills in the response
    ///     side and logs it. Handed out through `inout` so that it is moved, never copied: a record
    ///     returned inside the dispatch was copied whole on its way out (each field a reference to
    ///     count).
    static func start(
        _ head: RequestHead,
        at start: NIODeadline,
        record: inout RequestRecord?,
        recentHost: inout RecentText,
        streamEnded: Bool?,
        peer: PeerAddress,
        services: ConnectionServices,
        runtime: GatewayRuntime? = nil,
        downstream: DownstreamResponder,
        allocator: ByteBufferAllocator
    ) -> RequestDispatch {
        let runtime = runtime ?? services.runtime
        // The record is made once, with every field the pipeline decided: one made early and
        // edited was copied whole on its way out.
        let validated: RequestValidator.ValidatedHead
        switch RequestValidator.inspect(head, recentHost: &recentHost) {
        case .failure(let error):
            let requestID = RequestIdentity.requestID(clientSupplied: head.headers.first(name: "x-request-id"))
            let trace = TraceContext(traceparent: head.headers.first(name: "traceparent"))
            let response = error.response(requestID: requestID, trace: trace, allocator: allocator)
            record = RequestRecord(start: start, head: head, requestID: requestID, trace: trace)
            return RequestDispatch(outcome: .respond(response), requestID: requestID, responseAdditions: .none, hasBody: false)
        case .success(let inspected):
            validated = inspected
        }
        let requestID = RequestIdentity.requestID(clientSupplied: validated.requestID)
        let trace = TraceContext(traceparent: validated.traceparent, sampleNew: services.observability.samplesNewTraces)
        var framing = validated.framing
        if let streamEnded {
            // HTTP/2: the body ends with END_STREAM; without Content-Length it travels chunked upstream.
            if streamEnded {
                framing = .none
            } else if framing == .none {
                framing = .chunked
            }
        }
        let host = validated.host
        if let admin = services.admin, var response = Self.adminEndpoint(head, admin: admin, services: services, allocator: allocator) {
            response.source = .admin
            record = RequestRecord(start: start, head: head, requestID: requestID, trace: trace, host: host)
            return RequestDispatch(outcome: .respond(response), requestID: requestID, responseAdditions: .none, hasBody: false)
        }
        let decision = RequestPipeline.decide(
            method: head.method, target: head.uri, host: host, headers: head.headers, peer: peer,
            listener: services.listener, runtime: runtime, allocator: allocator
        )
        let route = decision.route, clientIP = decision.client.ip, additions = decision.responseAdditions
        let routed = Self.route(decision, head: head, framing: framing, host: host, requestID: requestID, trace: trace,
                                expectsContinue: head.version == .http1_1 && validated.expectsContinue,
                                runtime: runtime, services: services, downstream: downstream, allocator: allocator)
        record = RequestRecord(
            start: start, head: head, requestID: requestID, trace: trace, host: host, route: route?.name ?? "-", clientIP: clientIP,
            jwtRejection: routed.jwtRejection, subject: routed.subject
        )
        record?.series = route?.series
        return RequestDispatch(outcome: routed.outcome, requestID: requestID, responseAdditions: additions, hasBody: routed.hasBody)
    }

    /// `/metrics`, `GET /config` and `POST /config/reload` (admin listener only).
    private static func adminEndpoint(
        _ head: RequestHead, admin: AdminControl, services: ConnectionServices, allocator: ByteBufferAllocator
    ) -> LocalResponse? {
        switch (head.method, head.uri) {
        case (.GET, "/metrics"), (.HEAD, "/metrics"):
            let metrics = services.observability.metrics
            let now = NIODeadline.now()
            // Gauges read from the running config's upstreams at scrape time.
            for cluster in services.runtime.clusters.values {
                metrics.upstreamRetries.set([cluster.name], Double(cluster.retries.load(ordering: .relaxed)))
                for endpoint in cluster.endpoints {
                    metrics.upstreamEndpointUp.set([cluster.name, endpoint.key], endpoint.isUp(now: now) ? 1 : 0)
                }
            }
            let clusters = Array(services.runtime.clusters.values)
            var response = LocalResponse.json(.ok, metrics.render() + GatewayMetrics.renderEndpoints(clusters), allocator: allocator)
            response.headers.replaceOrAdd(name: "content-type", value: "text/plain; version=0.0.4")
            return response
        case (.GET, "/config"):
            return .json(.ok, admin.runningConfigJSON(), allocator: allocator)
        case (.POST, "/config/reload"):
            switch admin.reloadFromFile() {
            case .success(let hash):
                return .json(.ok, "{\"result\":\"success\",\"hash\":\"\(hash)\"}", allocator: allocator)
            case .failure(let errors):
                let list = errors.errors.map { "\"" + JSON.escaped($0.description) + "\"" }.joined(separator: ",")
                return .json(.badRequest, "{\"result\":\"invalid\",\"errors\":[\(list)]}", allocator: allocator)
            }
        case (.POST, let uri) where uri.hasPrefix("/cache/purge"):
            return ResponseCache.purgeResponse(uri: uri, runtime: services.runtime, allocator: allocator)
        default:
            return SplitAdmin.response(head, runtime: services.runtime, allocator: allocator)
                ?? AdminOperations.response(head, runtime: services.runtime, allocator: allocator)
        }
    }

    /// What routing decided: the dispatch's fields that depend on the decision.
    private struct Routed {
        var outcome: Outcome
        var hasBody: Bool
        var jwtRejection: String? = nil
        var subject: String? = nil
    }

    private static func route(
        _ decision: consuming PipelineDecision, head: RequestHead, framing: BodyFraming, host: String?, requestID: String,
        trace: TraceContext, expectsContinue: Bool, runtime: GatewayRuntime, services: ConnectionServices, downstream: DownstreamResponder, allocator: ByteBufferAllocator
    ) -> Routed {
        let additions = decision.responseAdditions
        let peer = decision.client.peer, peerTrusted = decision.client.peerTrusted
        func local(_ error: GatewayError, hasBody: Bool = false, jwtRejection: String? = nil) -> Routed {
            let response = error.response(requestID: requestID, trace: trace, allocator: allocator)
            return Routed(outcome: .respond(response), hasBody: hasBody, jwtRejection: jwtRejection)
        }
        // The action is moved out, not copied (its plan holds a dozen references).
        switch consume decision.action {
        case .respond(let response):
            return Routed(outcome: .respond(response), hasBody: framing.hasBody)
        case .error(let error):
            return local(error, hasBody: framing.hasBody, jwtRejection: error.rejectionReason)
        case .proxy(let plan):
            if case .contentLength(let length) = framing, length > runtime.traffic.maxBodyBytes {
                return local(.payloadTooLarge, hasBody: true, jwtRejection: plan.deferredError?.rejectionReason)
            }
            let cluster = plan.cluster
            let info = ForwardingInfo(
                peer: peer, peerTrusted: peerTrusted, requestID: requestID,
                scheme: services.listener.scheme, host: host,
                fallbackHost: cluster.endpoints.isEmpty ? "localhost" : cluster.endpoints[0].key, addedHeaders: plan.claimHeaders, trace: trace
            )
            var upstreamHead = UpstreamRequestHead.forwarded(
                ForwardedRequestHead(client: head, framing: framing, info: info, removing: plan.removedHeaders)
            )
            // An `Authorization` token already went with the rewrite's removed fields; the other
            // places (cookie, query, subprotocol) are edited here.
            if let token = plan.strippedToken, token != .authorization { upstreamHead = .rewritten(token.removed(from: upstreamHead.head)) }
            let webSocket = WebSocketHandshake.forRoute(plan.route, head: head, runtime: runtime)
            if let refusal = webSocket.flatMap({ _ in WebSocketHandshake.originRefusal(plan.route, head: head) }) {
                return local(refusal, jwtRejection: plan.deferredError?.rejectionReason)
            }
            if webSocket != nil { upstreamHead = .rewritten(WebSocketHandshake.upstreamHead(upstreamHead.head)) }
            let context = RequestContext(
                requestID: requestID, trace: trace, method: head.method, clientVersion: head.version,
                addHSTS: services.listener.isTLS, responseAdditions: additions
            )
            let exchange = RequestExchange(
                context: context, upstream: UpstreamLeg(head: upstreamHead, cluster: cluster, pool: services.loop.pool),
                rateLimit: plan.rateLimit, deferredError: plan.deferredError,
                expectsContinue: expectsContinue, requestHasBody: framing.hasBody, downstream: downstream,
                cache: plan.route.cache?.request(method: head.method, host: host, uri: head.uri, headers: head.headers,
                                                 hasBody: framing.hasBody, subject: plan.subject)
            )
            exchange.webSocket = webSocket
            exchange.streamIdle = plan.route.realtime.streamIdle
            exchange.streamingRoute = plan.route.realtime.streaming
            return Routed(
                outcome: .proxy(exchange), hasBody: framing.hasBody, jwtRejection: plan.deferredError?.rejectionReason,
                subject: plan.subject
            )
        }
    }
}
