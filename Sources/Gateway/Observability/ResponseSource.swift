/// Why a response happened: who made its status, and for a response cut short, why it was (Envoy's
/// response flags, spelled out). Every access-log line carries one as `source`, and
/// `gateway_requests_total` has it as a label, so a gateway-made 503 is told from an upstream's.
///
/// The set is closed (a label value a client cannot mint); `docs/observability.md` lists them.
enum ResponseSource: UInt8, CaseIterable, Sendable {
    /// The upstream's response, relayed in full.
    case upstream
    /// No route matches the host and path (404).
    case noRoute
    /// A route matches the path but not the method (405).
    case methodNotAllowed
    /// The request was malformed or its head too large (400, 431).
    case badRequest
    /// The request body exceeds `limits.max_body_bytes` (413).
    case payloadTooLarge
    /// The request head or body stopped arriving (408).
    case requestTimeout
    /// A missing, invalid or insufficient bearer token (401, 403).
    case auth
    /// A CORS preflight the route's policy refuses (403).
    case cors
    /// A CORS preflight answered by the gateway (204).
    case corsPreflight
    /// A rate-limit policy refused the request (429).
    case rateLimited
    /// The rate-limit store could not answer and the policy fails closed (503).
    case rateLimiterUnavailable
    /// Every endpoint of the route's upstream is out of rotation (503).
    case noHealthyUpstream
    /// `max_connections` reached and no connection freed within `connect_timeout` (503).
    case upstreamBusy
    /// No endpoint accepted a connection (502).
    case upstreamConnect
    /// The upstream closed or reset the connection after the request went out: before the response
    /// head (502), or in the middle of the response body (the client connection is torn down).
    case upstreamReset
    /// The upstream answered with something that is not HTTP/1.1 the gateway can relay (502).
    case upstreamProtocol
    /// No response head within the upstream's `response_timeout` (504).
    case upstreamTimeout
    /// The client went away before its response was complete (499 when no status was sent).
    case clientAbort
    /// `/health/live` and `/health/ready`.
    case health
    /// The HTTP→HTTPS redirect listener (308).
    case redirect
    /// An admin-listener endpoint (`/metrics`, `/config` …).
    case admin
    /// A local answer with no more specific reason.
    case local

    /// The label / log value.
    var name: String {
        switch self {
        case .upstream: "upstream"
        case .noRoute: "gateway:no_route"
        case .methodNotAllowed: "gateway:method_not_allowed"
        case .badRequest: "gateway:bad_request"
        case .payloadTooLarge: "gateway:payload_too_large"
        case .requestTimeout: "gateway:request_timeout"
        case .auth: "gateway:auth"
        case .cors: "gateway:cors"
        case .corsPreflight: "gateway:cors_preflight"
        case .rateLimited: "gateway:rate_limited"
        case .rateLimiterUnavailable: "gateway:rate_limiter_unavailable"
        case .noHealthyUpstream: "gateway:no_healthy_upstream"
        case .upstreamBusy: "gateway:upstream_busy"
        case .upstreamConnect: "gateway:upstream_connect"
        case .upstreamReset: "gateway:upstream_reset"
        case .upstreamProtocol: "gateway:upstream_protocol"
        case .upstreamTimeout: "gateway:upstream_timeout"
        case .clientAbort: "gateway:client_abort"
        case .health: "gateway:health"
        case .redirect: "gateway:redirect"
        case .admin: "gateway:admin"
        case .local: "gateway:local"
        }
    }

    /// The source of a gateway error, told by its stable JSON `code` (errors made in other files,
    /// such as the rate limiter's, need no knowledge of sources).
    init(errorCode code: String, status: Int) {
        switch code {
        case "not_found": self = .noRoute
        case "method_not_allowed": self = .methodNotAllowed
        case "bad_request", "headers_too_large": self = .badRequest
        case "payload_too_large": self = .payloadTooLarge
        case "request_timeout": self = .requestTimeout
        case "invalid_token", "forbidden": self = .auth
        case "cors_rejected": self = .cors
        case "rate_limited": self = .rateLimited
        case "rate_limiter_unavailable": self = .rateLimiterUnavailable
        case "no_healthy_upstream": self = .noHealthyUpstream
        case "upstream_busy": self = .upstreamBusy
        case "upstream_unavailable": self = .upstreamConnect
        case "upstream_timeout": self = .upstreamTimeout
        default: self = status == 499 ? .clientAbort : .local
        }
    }

    /// The source once the codec knows whether the response reached the client whole: a response
    /// cut short is the client's leaving unless the upstream broke it off.
    static func settled(_ source: ResponseSource?, responseComplete: Bool) -> ResponseSource {
        guard let source else { return .clientAbort }
        if !responseComplete && source == .upstream { return .clientAbort }
        return source
    }
}
