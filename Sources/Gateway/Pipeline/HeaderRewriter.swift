import NIOHTTP1

/// What the gateway knows about a request that upstream headers must carry.
struct ForwardingInfo {
    /// The TCP peer, appended to `X-Forwarded-For`.
    var peer: String
    /// The peer is a trusted proxy: its `X-Forwarded-For` chain, `Forwarded`, `X-Real-IP` and
    /// `CF-Connecting-IP` are kept (the chain with the peer appended).
    var peerTrusted: Bool = false
    var requestID: String
    /// `https` on TLS listeners, `http` otherwise.
    var scheme: String
    /// The host the client asked for (`Host` / `:authority`), if any.
    var host: String?
    /// Used as `Host` when an HTTP/1.0 client sent none.
    var fallbackHost: String
    /// Added after the rewrite: forwarded claims (`X-User-Id` …).
    var addedHeaders: [(String, String)] = []
    /// The request's trace: its `traceparent` replaces the client's (the gateway's span is the
    /// parent), and the client's `tracestate` goes along only when its trace is continued.
    var trace: TraceContext? = nil
}

/// Header rewriting at the proxy boundary, as pure functions (STYLE habit 1) so each rule has a
/// unit test: hop-by-hop fields go (RFC 9110 §7.6.1), spoofable forwarding fields from an untrusted
/// peer go, and the gateway's own `X-Forwarded-*` / `X-Request-Id` are added. On the way back the
/// pipeline's `ResponseAdditions` (CORS fields, `Vary: Origin`) are merged in.
enum HeaderRewriter {
    /// Hop-by-hop fields, plus `expect` (the gateway answers `100-continue` itself).
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-authenticate", "proxy-authorization", "expect",
    ]

    /// Fields a client could use to impersonate another client or a trusted proxy; dropped
    /// unless the peer is a trusted proxy.
    static let spoofable: Set<String> = ["x-forwarded-for", "forwarded", "x-real-ip", "cf-connecting-ip"]

    /// The gateway's own fields, always replaced by its values whoever the peer is.
    static let gatewayOwned: Set<String> = ["x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-request-id"]

    /// `Connection` values whose tokens name no field beyond those always dropped: the
    /// `keep-alive` or `close` nearly every HTTP/1.1 peer sends (nginx, Node, browsers). Such a
    /// field is dropped in the one pass over the head; any other token takes the second pass.
    static let tokensNamingNothingMore: [StaticString] = [
        "keep-alive", "close", "upgrade", "te", "trailer", "transfer-encoding", "connection", "proxy-connection",
        "expect", "proxy-authenticate", "proxy-authorization",
    ]

    /// Whether a `Connection` value means a second pass (its tokens name fields to drop).
    @inline(__always)
    static func connectionNamesMore(_ value: String) -> Bool {
        !value.listElementsAreAll(in: tokensNamingNothingMore)
    }

    /// `connectionNamesMore` of a value's bytes.
    @inline(__always)
    static func connectionNamesMore(_ value: UnsafeBufferPointer<UInt8>) -> Bool {
        !visitCommaSeparated(value) { element in
            element.isEmpty || tokensNamingNothingMore.contains { bytesEqualIgnoringASCIICase(element, $0) }
        }
    }

    /// Tokens listed in `Connection` name more hop-by-hop fields (RFC 9110 §7.6.1).
    static func connectionTokens<Fields: FieldSource>(_ fields: Fields) -> Set<String>? {
        var tokens: Set<String>? = nil
        fields.forEachField { name, value in
            guard bytesEqualIgnoringASCIICase(name, "connection") else { return true }
            _ = visitCommaSeparated(value) { token in
                if tokens == nil { tokens = [] }
                if !token.isEmpty { tokens!.insert(String(decoding: token, as: UTF8.self).lowercased()) }
                return true
            }
            return true
        }
        return tokens
    }

    /// Runs a rewrite with no `Connection` tokens (most heads name none, so no token set is built)
    /// and, when `attempt` returns nil because a `Connection` field names more fields to drop, once
    /// more knowing them. Every way of writing a rewritten head (fields, bytes, HTTP/2 fields) goes
    /// through here.
    static func inOneOrTwoPasses<Fields: FieldSource, Result>(_ fields: Fields, _ attempt: (Set<String>?) -> Result?) -> Result {
        if let done = attempt(nil) { return done }
        return attempt(connectionTokens(fields) ?? [])!
    }

    /// The request head sent upstream. Always HTTP/1.1; the body framing is the validated one.
    static func upstreamRequest(
        _ head: RequestHead,
        framing: BodyFraming,
        info: ForwardingInfo,
        removing extraRemoved: FieldNameSet = []
    ) -> HTTPRequestHead {
        inOneOrTwoPasses(head.headers) { rewrittenRequest(head, framing: framing, info: info, removing: extraRemoved, named: $0) }
    }

    /// `upstreamRequest` for the `Connection` tokens `named`; nil when `named` is nil and the
    /// request has a `Connection` field (most have none: one pass over the fields, no token set).
    private static func rewrittenRequest(
        _ head: RequestHead, framing: BodyFraming, info: ForwardingInfo, removing extraRemoved: FieldNameSet,
        named: Set<String>?
    ) -> HTTPRequestHead? {
        var sink = HeadersSink(capacity: head.headers.fieldCount + 6)
        guard rewriteRequestFields(head, framing: framing, info: info, removing: extraRemoved, named: named, into: &sink) else {
            return nil
        }
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: head.uri, headers: sink.headers)
    }

    /// The upstream request's rules, for both ways of writing its fields: into `HTTPHeaders`
    /// (`upstreamRequest`) or straight into the head's bytes (`ForwardedRequestHead`), so the two
    /// cannot drift apart. Returns false when `named` is nil and a `Connection` field names more
    /// fields to drop: the caller starts again with them.
    static func rewriteRequestFields<Sink: UpstreamFieldSink>(
        _ head: RequestHead, framing: BodyFraming, info: ForwardingInfo, removing extraRemoved: FieldNameSet,
        named: Set<String>?, into sink: inout Sink
    ) -> Bool {
        var sawHost = false
        var forwardedFor = ""
        var namesMore = false
        // Read out before the walk: a closure that read `info` copied all of it (each of its
        // strings a reference to count) per request.
        let peerTrusted = info.peerTrusted, trace = info.trace
        head.headers.forEachField { name, value in
            let kind = RequestFieldKind(name)
            if kind == .dropped {
                if named == nil, bytesEqualIgnoringASCIICase(name, "connection"), connectionNamesMore(value) {
                    namesMore = true
                    return false
                }
                return true
            }
            if extraRemoved.contains(name) { return true }
            if kind == .spoofable || kind == .forwardedFor {
                guard peerTrusted else { return true }
                if kind == .forwardedFor {
                    // Several fields are one comma-separated list (RFC 9110 §5.3); re-emitted once below.
                    let trimmed = trimmedFieldValue(value)
                    if !trimmed.isEmpty {
                        if !forwardedFor.isEmpty { forwardedFor += ", " }
                        forwardedFor += String(decoding: trimmed, as: UTF8.self)
                    }
                    return true
                }
            }
            if let named, Self.isListed(name, in: named) { return true }
            if kind == .contentLength {
                // Re-emitted once below from the validated framing.
                return true
            }
            if kind == .host { sawHost = true }
            if let trace {
                if kind == .traceparent || (kind == .tracestate && !trace.continued) { return true }
            }
            sink.add(name: name, value: value)
            return true
        }
        if namesMore { return false }
        if !sawHost { sink.add(lowercaseName: "host", value: info.fallbackHost) }
        switch framing {
        case .none: break
        case .contentLength(let length): sink.addContentLength(length)
        case .chunked: sink.add(lowercaseName: "transfer-encoding", value: "chunked")
        }
        sink.add(lowercaseName: "x-forwarded-for", value: forwardedFor.isEmpty ? info.peer : forwardedFor + ", " + info.peer)
        sink.add(lowercaseName: "x-forwarded-proto", value: info.scheme)
        if let host = info.host { sink.add(lowercaseName: "x-forwarded-host", value: host) }
        sink.add(lowercaseName: "x-request-id", value: info.requestID)
        if let trace = info.trace { sink.addTraceparent(trace) }
        for (name, value) in info.addedHeaders { sink.add(name: name, value: value) }
        return true
    }

    /// The rewrites' fields as `HTTPHeaders`.
    private struct HeadersSink: UpstreamFieldSink {
        var headers = HTTPHeaders()

        init(capacity: Int) { self.headers.reserveCapacity(capacity) }

        mutating func add(name: String, value: String) { self.headers.add(name: name, value: value) }
        mutating func add(lowercaseName name: StaticString, value: String) { self.headers.add(name: name.description, value: value) }
        mutating func add(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
            self.headers.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
        }
        mutating func addContentLength(_ length: Int) { self.headers.add(name: "content-length", value: String(length)) }
        mutating func addTraceparent(_ trace: TraceContext) { self.headers.add(name: "traceparent", value: trace.headerValue) }
    }

    /// `removing` holds a few lowercase names from the config, and `Connection` tokens are few:
    /// compared in place, not hashed.
    private static func isListed(_ name: UnsafeBufferPointer<UInt8>, in names: Set<String>) -> Bool {
        for listed in names where listed.withUTF8Bytes({ bytesEqualIgnoringASCIICase(anyCase: name, $0) }) { return true }
        return false
    }

    /// What `upstreamRequest` does with a client field, told by its name's bytes.
    private enum RequestFieldKind {
        /// Hop-by-hop, or one of the gateway's own (`gatewayOwned`).
        case dropped
        /// `spoofable`, kept from a trusted peer only.
        case spoofable
        case forwardedFor
        case contentLength
        case host
        case traceparent
        case tracestate
        case other

        init(_ name: UnsafeBufferPointer<UInt8>) {
            if HeaderRewriter.isHopByHop(name) {
                self = .dropped
                return
            }
            switch name.count {
            case 4 where bytesEqualIgnoringASCIICase(name, "host"): self = .host
            case 9 where bytesEqualIgnoringASCIICase(name, "forwarded") || bytesEqualIgnoringASCIICase(name, "x-real-ip"):
                self = .spoofable
            case 10 where bytesEqualIgnoringASCIICase(name, "tracestate"): self = .tracestate
            case 11 where bytesEqualIgnoringASCIICase(name, "traceparent"): self = .traceparent
            case 12 where bytesEqualIgnoringASCIICase(name, "x-request-id"): self = .dropped
            case 14 where bytesEqualIgnoringASCIICase(name, "content-length"): self = .contentLength
            case 15 where bytesEqualIgnoringASCIICase(name, "x-forwarded-for"): self = .forwardedFor
            case 16 where bytesEqualIgnoringASCIICase(name, "cf-connecting-ip"): self = .spoofable
            case 16 where bytesEqualIgnoringASCIICase(name, "x-forwarded-host") || bytesEqualIgnoringASCIICase(name, "x-forwarded-port"):
                self = .dropped
            case 17 where bytesEqualIgnoringASCIICase(name, "x-forwarded-proto"): self = .dropped
            default: self = .other
            }
        }
    }

    /// Membership in `hopByHop`, told by the name's bytes.
    static func isHopByHop(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        switch name.count {
        case 2: bytesEqualIgnoringASCIICase(name, "te")
        case 6: bytesEqualIgnoringASCIICase(name, "expect")
        case 7: bytesEqualIgnoringASCIICase(name, "upgrade") || bytesEqualIgnoringASCIICase(name, "trailer")
        case 10: bytesEqualIgnoringASCIICase(name, "connection") || bytesEqualIgnoringASCIICase(name, "keep-alive")
        case 16: bytesEqualIgnoringASCIICase(name, "proxy-connection")
        case 17: bytesEqualIgnoringASCIICase(name, "transfer-encoding")
        case 18: bytesEqualIgnoringASCIICase(name, "proxy-authenticate")
        case 19: bytesEqualIgnoringASCIICase(name, "proxy-authorization")
        default: false
        }
    }

    /// Membership in `hopByHop`, told by the name's bytes.
    static func isHopByHop(_ name: String) -> Bool {
        switch name.utf8.count {
        case 2: name.equalsIgnoringASCIICase("te")
        case 6: name.equalsIgnoringASCIICase("expect")
        case 7: name.equalsIgnoringASCIICase("upgrade") || name.equalsIgnoringASCIICase("trailer")
        case 10: name.equalsIgnoringASCIICase("connection") || name.equalsIgnoringASCIICase("keep-alive")
        case 16: name.equalsIgnoringASCIICase("proxy-connection")
        case 17: name.equalsIgnoringASCIICase("transfer-encoding")
        case 18: name.equalsIgnoringASCIICase("proxy-authenticate")
        case 19: name.equalsIgnoringASCIICase("proxy-authorization")
        default: false
        }
    }

    /// `trimmedFieldValue` of a value's bytes: a narrower view of them.
    static func trimmedFieldValue(_ value: UnsafeBufferPointer<UInt8>) -> UnsafeBufferPointer<UInt8> {
        var low = 0
        var high = value.count
        while low < high, value[low] == UInt8(ascii: " ") || value[low] == UInt8(ascii: "\t") { low += 1 }
        while high > low, value[high - 1] == UInt8(ascii: " ") || value[high - 1] == UInt8(ascii: "\t") { high -= 1 }
        return UnsafeBufferPointer(rebasing: value[low..<high])
    }

    /// A field value without its leading and trailing SP/HTAB, which are not part of it (RFC 9110
    /// §5.5) and which HTTP/2 clients refuse (RFC 9113 §8.2.1). Allocates only when there is any.
    static func trimmedFieldValue(_ value: String) -> String {
        let bytes = value.utf8
        guard let first = bytes.first, let last = bytes.last,
            first == UInt8(ascii: " ") || first == UInt8(ascii: "\t") || last == UInt8(ascii: " ") || last == UInt8(ascii: "\t")
        else { return value }
        return String(Substring(value).trimmingSpaces)
    }

    /// Fields that mean something only to an HTTP/1.1 connection (RFC 9113 §8.2.2); an HTTP/2
    /// client treats a response carrying one as malformed.
    static let connectionSpecific: Set<String> = hopByHop.union(["proxy-connection"])

    /// One response field as it may go out in an HTTP/2 HEADERS frame, or nil if it must be dropped
    /// (the rule is `HTTP2ResponseField`'s, which the HTTP/2 codec applies while copying fields).
    static func http2ResponseField(name: String, value: String) -> (name: String, value: String)? {
        let scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: max(name.utf8.count, value.utf8.count, 1))
        defer { scratch.deallocate() }
        guard let nameCount = HTTP2ResponseField.copyName(name, to: scratch) else { return nil }
        let lower = String(decoding: UnsafeBufferPointer(start: scratch, count: nameCount), as: UTF8.self)
        guard let valueCount = HTTP2ResponseField.copyValue(value, to: scratch) else { return nil }
        return (lower, String(decoding: UnsafeBufferPointer(start: scratch, count: valueCount), as: UTF8.self))
    }

    /// How the response body travels to the client.
    enum ResponseFraming: Equatable {
        /// No body (HEAD, 1xx, 204, 304) or a `Content-Length` passed through.
        case asIs
        /// Re-chunked for an HTTP/1.1 client.
        case chunked
        /// An HTTP/1.0 client without length: the body ends when the connection closes.
        case closeDelimited
    }

    /// The response head sent to the client, and how its body is framed.
    static func clientResponse(
        _ head: HTTPResponseHead,
        requestMethod: HTTPMethod,
        clientVersion: HTTPVersion,
        requestID: String,
        addHSTS: Bool,
        additions: ResponseAdditions = .none
    ) -> (HTTPResponseHead, ResponseFraming) {
        clientResponse(
            head.headers, status: head.status, requestMethod: requestMethod, clientVersion: clientVersion,
            requestID: requestID, addHSTS: addHSTS, additions: additions
        )
    }

    /// `clientResponse` of a head given as its status and fields (an upstream's field lines).
    static func clientResponse<Fields: FieldSource>(
        _ fields: Fields, status: HTTPResponseStatus, requestMethod: HTTPMethod, clientVersion: HTTPVersion,
        requestID: String, addHSTS: Bool, additions: ResponseAdditions
    ) -> (HTTPResponseHead, ResponseFraming) {
        inOneOrTwoPasses(fields) { named in
            var sink = HeadersSink(capacity: fields.fieldCount + 4 + additions.headers.count)
            guard let framing = rewriteResponseFields(
                fields, status: status, requestMethod: requestMethod, clientVersion: clientVersion, requestID: requestID,
                addHSTS: addHSTS, additions: additions, named: named, into: &sink
            ) else { return nil }
            return (HTTPResponseHead(version: clientVersion, status: status, headers: sink.headers), framing)
        }
    }

    /// The client response's rules, for every way of writing its fields: into `HTTPHeaders`
    /// (`clientResponse`), straight into the head's bytes (`ForwardedResponseHead`) or into HTTP/2
    /// fields. Reads and copies the fields as bytes. Returns the body's framing, or nil when
    /// `named` is nil and a `Connection` field names more fields to drop: the caller starts again
    /// with them.
    static func rewriteResponseFields<Fields: FieldSource, Sink: HeadFieldSink>(
        _ fields: Fields, status: HTTPResponseStatus, requestMethod: HTTPMethod, clientVersion: HTTPVersion,
        requestID: String, addHSTS: Bool, additions: ResponseAdditions, named: Set<String>?, into sink: inout Sink
    ) -> ResponseFraming? {
        var hasLength = false
        var hasHSTS = false
        var namesMore = false
        var vary: [String] = []
        fields.forEachField { name, rawValue in
            if Self.isHopByHop(name) {
                if named == nil, bytesEqualIgnoringASCIICase(name, "connection"), connectionNamesMore(rawValue) {
                    namesMore = true
                    return false
                }
                return true
            }
            if bytesEqualIgnoringASCIICase(name, "x-request-id") { return true }
            let value = trimmedFieldValue(rawValue)
            if let named, named.contains(String(decoding: name, as: UTF8.self).lowercased()) { return true }
            if additions.corsEnabled {
                // The gateway answers CORS for this route: the upstream's fields would duplicate
                // or contradict it, and `Vary` is re-emitted once with `Origin` merged in.
                if bytesEqualIgnoringASCIICase(name, "vary") {
                    vary.append(String(decoding: value, as: UTF8.self))
                    return true
                }
                if ResponseAdditions.isCORSField(name) { return true }
            }
            if bytesEqualIgnoringASCIICase(name, "content-length") { hasLength = true }
            if bytesEqualIgnoringASCIICase(name, "strict-transport-security") { hasHSTS = true }
            // The gateway's rate-limit fields replace the upstream's of the same name.
            if additions.replaces(name) { return true }
            sink.add(name: name, value: value)
            return true
        }
        if namesMore { return nil }
        if !additions.replaces("x-request-id") { sink.add(lowercaseName: "x-request-id", value: requestID) }
        // Each rate-limit field once, the last of a name winning (as `replaceOrAdd` in turn would).
        let extra = additions.extraHeaders
        for index in extra.indices where !extra[(index + 1)...].contains(where: { $0.0.equalsIgnoringASCIICase(anyCase: extra[index].0) }) {
            sink.add(name: extra[index].0, value: extra[index].1)
        }
        if additions.corsEnabled {
            for (name, value) in additions.headers { sink.add(name: name, value: value) }
            if let merged = ResponseAdditions.mergedVary(vary) {
                sink.add(lowercaseName: "vary", value: merged)
            } else {
                for value in vary { sink.add(lowercaseName: "vary", value: value) }
            }
        }
        if addHSTS && !hasHSTS {
            sink.add(lowercaseName: ResponseAdditions.hstsName, value: ResponseAdditions.hsts.value)
        }
        let code = status.code
        let bodiless = requestMethod.isHEAD || (100..<200).contains(code) || code == 204 || code == 304
        var framing = ResponseFraming.asIs
        if !bodiless && !hasLength && clientVersion.major == 1 {
            // HTTP/2 frames the body itself (DATA + END_STREAM).
            if clientVersion.minor >= 1 {
                sink.add(name: "transfer-encoding", value: "chunked")
                framing = .chunked
            } else {
                framing = .closeDelimited
            }
        }
        return framing
    }

}
