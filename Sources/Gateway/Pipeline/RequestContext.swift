import NIOHTTP1

/// What every phase of one proxied request reads, captured once by the dispatch: who the request
/// is (its id and trace), what the client speaks (method and version), and what each response to
/// it carries (HSTS, CORS fields, the rate limiter's fields). The response filter is this value's:
/// the upstream's head and a cached one are rewritten from it in one pass each. Its methods are
/// `mutating` so that the exchange calls them in place (see `UpstreamLeg`).
struct RequestContext {
    let requestID: String
    /// For the `trace_id` of the errors the exchange answers with.
    let trace: TraceContext?
    let method: HTTPMethod
    let clientVersion: HTTPVersion
    /// A TLS listener's responses carry `Strict-Transport-Security`.
    let addHSTS: Bool
    /// CORS fields from the dispatch, rate-limit fields once the limiter answered.
    var responseAdditions: ResponseAdditions

    /// The upstream's head as the client gets it (written by the codec in one pass).
    mutating func forwarded(_ head: UpstreamResponseHead) -> ForwardedResponseHead {
        ForwardedResponseHead(
            upstream: head, requestMethod: self.method, clientVersion: self.clientVersion,
            requestID: self.requestID, addHSTS: self.addHSTS, additions: self.responseAdditions
        )
    }

    /// A stored head (a cached response) as the client gets it.
    mutating func rewritten(_ head: HTTPResponseHead) -> (HTTPResponseHead, HeaderRewriter.ResponseFraming) {
        HeaderRewriter.clientResponse(
            head, requestMethod: self.method, clientVersion: self.clientVersion,
            requestID: self.requestID, addHSTS: self.addHSTS, additions: self.responseAdditions
        )
    }

    /// Adds the rate limiter's fields to every response from here on.
    mutating func addRateLimitFields(_ fields: [(String, String)]) {
        if self.responseAdditions.extraHeaders.isEmpty {
            self.responseAdditions.extraHeaders = fields  // shared, not copied
        } else {
            self.responseAdditions.extraHeaders.append(contentsOf: fields)
        }
    }
}
