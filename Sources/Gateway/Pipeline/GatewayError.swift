import NIOCore
import NIOHTTP1

/// A response the gateway makes itself (errors, health, redirects), fully buffered.
struct LocalResponse {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: ByteBuffer
    /// Close the client connection after this response (e.g. the request body was not read).
    var closeConnection: Bool = false
    /// Why it was made, for the access log and `gateway_requests_total{source}`.
    var source: ResponseSource = .local
}

/// An error the gateway answers itself. Knows its HTTP status and its stable JSON `code` (SPEC
/// "What a client gets"); the message is for humans and never echoes request data such as tokens.
///
/// One reference wide: its `Fields` live in a shared box, copied on write. Every request's
/// validation result, pipeline decision and proxy plan has room for an error, and with ~130 bytes
/// of fields inline each of them was copied that much larger on every request that had none.
@dynamicMemberLookup
struct GatewayError: Error, Equatable, CustomStringConvertible {
    struct Fields: Sendable {
        var status: HTTPResponseStatus
        var code: String
        var message: String
        /// Extra response headers (`Allow` for 405, `Retry-After` for 429/503 …).
        var headers: [(String, String)] = []
        /// Whether the client connection must be closed after the response (framing is no longer trusted).
        var closesConnection = false
        /// For `gateway_jwt_rejections_total{reason}`: why a bearer token was refused.
        var rejectionReason: String? = nil
        /// Set where the error's `code` alone does not tell why (an upstream reset is
        /// `upstream_unavailable` like a refused connect); nil: `ResponseSource(errorCode:)`.
        var sourceOverride: ResponseSource? = nil
        /// The request's trace, for the body's `trace_id`, when whoever answers does not pass one
        /// (`RequestExchange` sets it on the errors it hands its responder).
        var trace: TraceContext? = nil
    }

    /// Changed only through the subscript below, on a box no other value holds.
    private final class Box: @unchecked Sendable {
        var fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var box: Box

    init(
        status: HTTPResponseStatus, code: String, message: String, headers: [(String, String)] = [],
        closesConnection: Bool = false, rejectionReason: String? = nil, sourceOverride: ResponseSource? = nil,
        trace: TraceContext? = nil
    ) {
        self.box = Box(Fields(
            status: status, code: code, message: message, headers: headers, closesConnection: closesConnection,
            rejectionReason: rejectionReason, sourceOverride: sourceOverride, trace: trace
        ))
    }

    /// Each field, read from the box; written to a box of this value's own (copied first if shared),
    /// so editing a value never changes another that was copied from it.
    subscript<Value>(dynamicMember field: WritableKeyPath<Fields, Value>) -> Value {
        get { self.box.fields[keyPath: field] }
        set {
            if !isKnownUniquelyReferenced(&self.box) { self.box = Box(self.box.fields) }
            self.box.fields[keyPath: field] = newValue
        }
    }

    var source: ResponseSource {
        self.sourceOverride ?? ResponseSource(errorCode: self.code, status: Int(self.status.code))
    }

    var description: String { "\(self.status.code) \(self.code): \(self.message)" }

    static func == (lhs: GatewayError, rhs: GatewayError) -> Bool {
        lhs.status == rhs.status && lhs.code == rhs.code && lhs.message == rhs.message
            && lhs.closesConnection == rhs.closesConnection
            && lhs.headers.elementsEqual(rhs.headers, by: { $0 == $1 })
    }

    static func badRequest(_ message: String) -> GatewayError {
        GatewayError(status: .badRequest, code: "bad_request", message: message, closesConnection: true)
    }
    static let notFound = GatewayError(status: .notFound, code: "not_found", message: "no route matches this request")
    static func methodNotAllowed(allow: [String]) -> GatewayError {
        GatewayError(
            status: .methodNotAllowed, code: "method_not_allowed",
            message: "method not allowed on this path", headers: [("allow", allow.joined(separator: ", "))]
        )
    }
    static let requestTimeout = GatewayError(
        status: .requestTimeout, code: "request_timeout", message: "timed out waiting for the request headers",
        closesConnection: true
    )
    /// A request body that stopped arriving for `timeouts.idle` (HTTP/1.1 and HTTP/2 alike).
    static let bodyTimeout = GatewayError(
        status: .requestTimeout, code: "request_timeout", message: "timed out waiting for the request body",
        closesConnection: true
    )
    static let payloadTooLarge = GatewayError(
        status: .payloadTooLarge, code: "payload_too_large", message: "request body exceeds the size limit",
        closesConnection: true
    )
    static let headersTooLarge = GatewayError(
        status: .init(statusCode: 431), code: "headers_too_large", message: "request headers exceed the size limit",
        closesConnection: true
    )
    static let upstreamUnavailable = GatewayError(
        status: .badGateway, code: "upstream_unavailable", message: "the upstream service could not be reached"
    )
    static let badUpstreamResponse = GatewayError(
        status: .badGateway, code: "upstream_unavailable", message: "the upstream service sent an invalid response",
        sourceOverride: .upstreamProtocol
    )
    static let noHealthyUpstream = GatewayError(
        status: .serviceUnavailable, code: "no_healthy_upstream", message: "no healthy upstream endpoint"
    )
    static let upstreamBusy = GatewayError(
        status: .serviceUnavailable, code: "upstream_busy",
        message: "all upstream connections are in use", headers: [("retry-after", "1")]
    )
    static let upstreamTimeout = GatewayError(
        status: .gatewayTimeout, code: "upstream_timeout", message: "the upstream service did not answer in time"
    )
    /// 401 without a token: RFC 6750 §3.1 says a request with no authentication information gets
    /// a challenge without an error code.
    static let missingToken = GatewayError(
        status: .unauthorized, code: "invalid_token", message: "a bearer token is required",
        headers: [("www-authenticate", "Bearer realm=\"api\"")], rejectionReason: "missing"
    )
    /// 401 for a token that failed verification; `category` is `JWTError.category` (a fixed
    /// `[a-z_]` word such as `expired`), never any part of the token.
    static func invalidToken(category: String) -> GatewayError {
        GatewayError(
            status: .unauthorized, code: "invalid_token", message: "the bearer token is not valid (\(category))",
            headers: [("www-authenticate", "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"\(category)\"")],
            rejectionReason: category
        )
    }
    /// 403 for a valid token without the route's `require_claims` (`claim` is the configured name).
    static func forbidden(claim: String) -> GatewayError {
        GatewayError(
            status: .forbidden, code: "forbidden", message: "the token's \(claim) claim does not allow this route",
            headers: [("www-authenticate", "Bearer realm=\"api\", error=\"insufficient_scope\"")],
            rejectionReason: "missing_claim"
        )
    }
    /// 403 for a CORS preflight the `cors` section does not allow (origin, method or headers).
    static let corsRejected = GatewayError(
        status: .forbidden, code: "cors_rejected", message: "this cross-origin request is not allowed"
    )
    /// The SPEC's JSON error body: `{"error":{"code":"...","message":"...","request_id":"..."}}`,
    /// plus `"trace_id"` when the request's trace is known (so a client's report finds the trace).
    func response(requestID: String, trace: TraceContext? = nil, allocator: ByteBufferAllocator) -> LocalResponse {
        var body = allocator.buffer(capacity: 136 + self.message.utf8.count + requestID.utf8.count)
        body.writeStaticString("{\"error\":{\"code\":\"")
        body.writeString(self.code)
        body.writeStaticString("\",\"message\":\"")
        JSON.writeEscaped(self.message, into: &body)
        body.writeStaticString("\",\"request_id\":\"")
        JSON.writeEscaped(requestID, into: &body)
        if let trace = trace ?? self.trace {
            body.writeStaticString("\",\"trace_id\":\"")
            trace.writeTraceID(into: &body)
        }
        body.writeStaticString("\"}}")
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.readableBytes))
        for (name, value) in self.headers { headers.add(name: name, value: value) }
        return LocalResponse(
            status: self.status, headers: headers, body: body, closeConnection: self.closesConnection, source: self.source
        )
    }
}

/// Minimal JSON string escaping for the few strings the gateway writes itself.
enum JSON {
    static func writeEscaped(_ string: String, into buffer: inout ByteBuffer) {
        string.withUTF8Bytes { bytes in
            var escaped = JSONBytes(capacity: bytes.count + 16)
            escaped.appendEscaped(bytes)
            buffer.writeBytes(escaped.bytes)
        }
    }

    static func escaped(_ string: String) -> String {
        var buffer = ByteBuffer()
        writeEscaped(string, into: &buffer)
        return String(buffer: buffer)
    }
}

extension LocalResponse {
    static func json(_ status: HTTPResponseStatus, _ json: String, allocator: ByteBufferAllocator) -> LocalResponse {
        var body = allocator.buffer(capacity: json.utf8.count)
        body.writeString(json)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.readableBytes))
        return LocalResponse(status: status, headers: headers, body: body)
    }
}
