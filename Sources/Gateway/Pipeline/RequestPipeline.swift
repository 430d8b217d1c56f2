import NIOCore
import NIOHTTP1

/// What the pipeline decided for one request.
///
/// Not copyable, nor is its action: both are made once and moved to `RequestDispatch`, never
/// copied (the proxy plan holds a dozen references to count; a copyable action was copied on its
/// way out of the decision, and both copies destroyed).
struct PipelineDecision: ~Copyable {
    enum Action: ~Copyable {
        /// Answer locally (health, redirect, CORS preflight).
        case respond(LocalResponse)
        case error(GatewayError)
        /// Proxy to this route's upstream.
        case proxy(ProxyPlan)
    }

    var action: Action
    /// Headers for whatever response goes back — local, error or proxied (CORS fields and
    /// `Vary: Origin` on a CORS-enabled route). `ResponseAdditions.stampLocalResponse` stamps a
    /// local response; `HeaderRewriter.clientResponse(additions:)` merges them into an upstream's.
    var responseAdditions: ResponseAdditions
    /// Who the client is (TCP peer, or what a trusted proxy says).
    var client: ClientIdentity
    /// The matched route (nil: none), whose name and series the request is logged and counted under.
    var route: Route?

    @inline(__always)
    init(_ action: consuming Action, _ responseAdditions: ResponseAdditions = .none, client: ClientIdentity, route: Route? = nil) {
        self.action = action
        self.responseAdditions = responseAdditions
        self.client = client
        self.route = route
    }
}

/// What a proxied request needs beyond its head.
struct ProxyPlan {
    var route: Route
    var cluster: UpstreamCluster
    /// Forwarded claims (`forward_claims`) to add to the upstream request.
    var claimHeaders: [(String, String)]
    /// Client-sent fields to drop on top of `HeaderRewriter`'s fixed lists (claim headers, and
    /// `client_ip.header` from an untrusted peer). Pass as `upstreamRequest(removing:)`.
    var removedHeaders: FieldNameSet
    /// The verified token's `sub`, if any (rate-limit keys, the access log's subject hash).
    var subject: String? = nil
    /// Where the token was read from, removed from the upstream request (`jwt.forward_token`).
    var strippedToken: TokenLocation? = nil
    /// What to count before proxying (nil: nothing).
    var rateLimit: RateLimitRequest? = nil
    /// The refusal to answer with once `rateLimit` allowed the request: nothing is proxied.
    var deferredError: GatewayError? = nil
}

/// The protocol-independent request phases after decoding (STYLE "the shape of a request"):
/// identify (client IP) → route → CORS (preflights answered here, before authentication) →
/// authenticate (JWT) → proxy. HTTP/1.1 requests and HTTP/2 streams both come through `decide`, so
/// a policy is enforced once whatever the protocol. Rate limiting plugs in after authentication
/// (`client_ip` policies also count requests authentication refused).
enum RequestPipeline {
    static func decide(
        method: HTTPMethod,
        target: String,
        host: String?,
        headers: HeadFields,
        peer: PeerAddress,
        listener: ListenerInfo,
        runtime: GatewayRuntime,
        allocator: ByteBufferAllocator
    ) -> PipelineDecision {
        let client = runtime.clientIP.resolve(peer: peer, headers: headers)
        // Searched as bytes: the UTF-8 view's `firstIndex` steps a string index per byte (and a
        // generic search, unspecialized in debug builds, allocates per byte).
        let query = target.withUTF8Bytes { bytes -> Int? in
            for index in 0..<bytes.count where bytes[index] == UInt8(ascii: "?") { return index }
            return nil
        }
        let path = query.map { target[..<target.utf8.index(target.utf8.startIndex, offsetBy: $0)] } ?? Substring(target)

        if path.withUTF8Bytes({ bytesHavePrefix($0, "/health") }), var response = Health.response(
            path: path, method: method, listener: listener, runtime: runtime, allocator: allocator
        ) {
            response.source = .health
            return PipelineDecision(.respond(response), client: client)
        }

        switch listener.role {
        case .admin:
            return PipelineDecision(.error(.notFound), client: client)
        case .redirect:
            let port = runtime.status.httpsPort.load(ordering: .relaxed)
            var response = redirect(target: target, host: host, httpsPort: port == 0 ? nil : port, allocator: allocator)
            if response.source == .local { response.source = .redirect }
            return PipelineDecision(.respond(response), client: client)
        case .proxy:
            break
        }

        // A preflight is routed by the method it asks about: `OPTIONS` itself is rarely routed,
        // and the answer must follow the policy of the route the real request will take.
        let preflightMethod = CORSPolicy.preflightMethod(method: method, headers: headers)
        var lookup: RouteLookup
        if let asked = preflightMethod, isHTTPToken(asked) {
            lookup = runtime.routes.match(host: host, path: path, method: asked, headers: headers)
        } else {
            lookup = runtime.routes.match(host: host, path: path, method: method, headers: headers)
        }
        if preflightMethod != nil, case .matched(let route) = lookup, route.cors == nil {
            // No CORS on that route: the OPTIONS is an ordinary request.
            lookup = runtime.routes.match(host: host, path: path, method: method, headers: headers)
        }

        let route: Route
        switch lookup {
        case .notFound:
            return PipelineDecision(.error(.notFound), runtime.cors?.actual(headers) ?? .none, client: client)
        case .methodNotAllowed(let allow):
            return PipelineDecision(.error(.methodNotAllowed(allow: allow)), runtime.cors?.actual(headers) ?? .none, client: client)
        case .matched(let matched):
            route = matched
        }

        var additions = ResponseAdditions.none
        if let cors = route.cors {
            if let preflightMethod {
                switch cors.preflight(requestedMethod: preflightMethod, headers: headers) {
                case .allowed(let fields):
                    var response = LocalResponse(status: .noContent, headers: HTTPHeaders(fields), body: allocator.buffer(capacity: 0))
                    response.headers.add(name: "vary", value: CORSPolicy.preflightVary)
                    response.source = .corsPreflight
                    return PipelineDecision(.respond(response), client: client, route: route)
                case .rejected:
                    let rejected = ResponseAdditions(headers: [], corsEnabled: true)
                    return PipelineDecision(.error(.corsRejected), rejected, client: client, route: route)
                }
            }
            additions = cors.actual(headers)
        }

        var claimHeaders: [(String, String)] = []
        var identity: Authenticator.Identity? = nil
        if route.auth != .none {
            guard let authenticator = runtime.authenticator else {
                // Config validation makes this unreachable; fail closed if it ever is not.
                return PipelineDecision(.error(.missingToken), additions, client: client, route: route)
            }
            switch authenticator.authenticate(
                headers, target: target, mode: route.auth, requiredClaims: route.requiredClaims, identity: route.identity
            ) {
            case .anonymous: break
            case .authenticated(let headers, let verified):
                claimHeaders = headers
                identity = verified
            case .rejected(let error):
                if let plan = countedRefusal(error, route: route, client: client, headers: headers, runtime: runtime) {
                    return PipelineDecision(.proxy(plan), additions, client: client, route: route)
                }
                return PipelineDecision(.error(error), additions, client: client, route: route)
            }
        }

        let cluster: UpstreamCluster?
        if let chosen = route.split?.choose(clientIP: client.ip, subject: identity?.subject, claimHeaders: claimHeaders, headers: headers) {
            cluster = runtime.clusters[chosen]
        } else {
            cluster = route.cluster ?? runtime.clusters[route.upstreamName]
        }
        guard let cluster else {
            return PipelineDecision(.error(.noHealthyUpstream), additions, client: client, route: route)
        }
        let removed: FieldNameSet
        if identity?.strip == .authorization {
            removed = client.peerTrusted ? runtime.removedFromTrustedPeerWithToken : runtime.removedFromUntrustedPeerWithToken
        } else {
            removed = client.peerTrusted ? runtime.removedFromTrustedPeer : runtime.removedFromUntrustedPeer
        }
        // Counted after authentication, so policies keyed by a token claim (or tiered by one) see
        // the verified claims. Preflights and /health* never get here; refused tokens were
        // counted above by the policies keyed by address only.
        let rateLimit = runtime.rateLimiter?.request(
            rules: route.rateLimits, clientIP: client.ip, claims: identity?.claims, headers: headers, route: route.name
        )
        // Built whole and passed on at its last use, so it is moved into the decision, not copied
        // (a plan edited after it was made was copied whole, a dozen references).
        let plan = ProxyPlan(
            route: route, cluster: cluster, claimHeaders: claimHeaders, removedHeaders: removed,
            subject: identity?.subject, strippedToken: identity?.strip, rateLimit: rateLimit
        )
        return PipelineDecision(.proxy(plan), additions, client: client, route: route)
    }

    /// A request authentication refused still spends its address's budget: the route's policies
    /// keyed by `client_ip` (and not by a token claim) count it, and the refusal is sent once the
    /// count is done, so a flood of missing or bad tokens gets 429 like any other flood. Nil when
    /// no such policy applies (the refusal goes out at once).
    static func countedRefusal(
        _ error: GatewayError, route: Route, client: ClientIdentity, headers: HeadFields, runtime: GatewayRuntime
    ) -> ProxyPlan? {
        guard let limiter = runtime.rateLimiter, route.rateLimits.contains(where: \.countsRefusedRequests),
            let cluster = route.cluster ?? runtime.clusters[route.upstreamName],
            let request = limiter.request(
                rules: route.rateLimits.filter(\.countsRefusedRequests), clientIP: client.ip, claims: nil,
                headers: headers, route: route.name
            )
        else { return nil }
        var plan = ProxyPlan(route: route, cluster: cluster, claimHeaders: [], removedHeaders: [])
        plan.rateLimit = request
        plan.deferredError = error
        return plan
    }

    /// 308 keeps the method and body (unlike 301), so a POST sent to http:// is not turned into a GET.
    static func redirect(target: String, host: String?, httpsPort: Int?, allocator: ByteBufferAllocator) -> LocalResponse {
        let bareHost = host.map { RouteTable.normalizeHost($0) } ?? ""
        guard !bareHost.isEmpty, RequestValidator.isHostSafe(bareHost) else {
            return GatewayError.badRequest("a Host header is required").response(requestID: "", allocator: allocator)
        }
        var location = "https://" + bareHost
        if let httpsPort, httpsPort != 443 { location += ":\(httpsPort)" }
        location += target
        var response = LocalResponse.json(.permanentRedirect, "{\"redirect\":\"\(JSON.escaped(location))\"}", allocator: allocator)
        response.headers.add(name: "location", value: location)
        return response
    }
}

extension RequestValidator {
    /// Host names that may be echoed into a `Location` header.
    static func isHostSafe(_ host: Substring) -> Bool {
        host.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."),
                UInt8(ascii: "-"), UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: ":"):
                true
            default: false
            }
        }
    }
}

