import NIOHTTP1

/// Headers the pipeline adds to whatever response goes back for one request — the upstream's,
/// or one the gateway made (401, 403, 404, 502 …): a browser can only read an error that carries
/// the CORS fields (SPEC "What a client gets").
struct ResponseAdditions: Sendable {
    /// CORS fields (`Access-Control-Allow-Origin` …); empty for a disallowed or absent `Origin`.
    var headers: [(String, String)] = []
    /// The route does CORS: `Vary: Origin` is merged into the response's `Vary` (the answer
    /// depends on `Origin`, so a shared cache must not serve one origin's answer to another), and
    /// the upstream's own `Access-Control-*` fields are dropped in favour of the gateway's.
    var corsEnabled = false
    /// Fields for every response whatever the route's CORS (rate-limit fields).
    var extraHeaders: [(String, String)] = []

    static let none = ResponseAdditions()

    /// The CORS response fields the gateway owns on a CORS-enabled route.
    static let corsFields: Set<String> = [
        "access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers",
        "access-control-allow-methods", "access-control-allow-headers", "access-control-max-age",
    ]

    /// Membership in `corsFields`, told by the name's bytes (no lowercased copy per field).
    static func isCORSField(_ name: String) -> Bool {
        guard name.utf8.count >= 22, name.utf8.first.map({ $0 | 0x20 }) == UInt8(ascii: "a") else { return false }
        return name.equalsIgnoringASCIICase("access-control-allow-origin")
            || name.equalsIgnoringASCIICase("access-control-allow-credentials")
            || name.equalsIgnoringASCIICase("access-control-expose-headers")
            || name.equalsIgnoringASCIICase("access-control-allow-methods")
            || name.equalsIgnoringASCIICase("access-control-allow-headers")
            || name.equalsIgnoringASCIICase("access-control-max-age")
    }

    /// `isCORSField` of a name's bytes.
    static func isCORSField(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        guard name.count >= 22, name[0] | 0x20 == UInt8(ascii: "a") else { return false }
        return bytesEqualIgnoringASCIICase(name, "access-control-allow-origin")
            || bytesEqualIgnoringASCIICase(name, "access-control-allow-credentials")
            || bytesEqualIgnoringASCIICase(name, "access-control-expose-headers")
            || bytesEqualIgnoringASCIICase(name, "access-control-allow-methods")
            || bytesEqualIgnoringASCIICase(name, "access-control-allow-headers")
            || bytesEqualIgnoringASCIICase(name, "access-control-max-age")
    }

    /// Applies the additions to a response's headers (gateway-made or upstream).
    func apply(to headers: inout HTTPHeaders) {
        for (name, value) in self.extraHeaders { headers.replaceOrAdd(name: name, value: value) }
        guard self.corsEnabled else { return }
        var vary: [String] = []
        var hasCORSFields = false
        for (name, value) in headers {
            if name.equalsIgnoringASCIICase("vary") { vary.append(value) } else if Self.isCORSField(name) { hasCORSFields = true }
        }
        if hasCORSFields { for field in Self.corsFields { headers.remove(name: field) } }
        for (name, value) in self.headers { headers.add(name: name, value: value) }
        if let merged = Self.mergedVary(vary) {
            headers.remove(name: "vary")
            headers.add(name: "vary", value: merged)
        }
    }

    /// Whether one of `extraHeaders` replaces a response field named `name`.
    @inline(__always)
    func replaces(_ name: String) -> Bool {
        guard !self.extraHeaders.isEmpty else { return false }
        return self.extraHeaders.contains { $0.0.equalsIgnoringASCIICase(anyCase: name) }
    }

    /// `replaces` for a name's bytes.
    @inline(__always)
    func replaces(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        guard !self.extraHeaders.isEmpty else { return false }
        return self.extraHeaders.contains { extra in
            extra.0.withUTF8Bytes { bytesEqualIgnoringASCIICase(anyCase: name, $0) }
        }
    }

    /// `Strict-Transport-Security` on every response from a TLS listener (a year, subdomains too).
    static let hsts = (name: "strict-transport-security", value: "max-age=31536000; includeSubDomains")
    /// `hsts.name` for `HeadFieldSink.add(lowercaseName:value:)`.
    static let hstsName: StaticString = "strict-transport-security"

    /// Stamps a gateway-made response (health, refusals, 502/504, a WebSocket switch) with what every
    /// response to the request carries: these additions, the request id and, on a TLS listener,
    /// HSTS. The one place local responses get them on both protocols; proxied responses get the
    /// same from `HeaderRewriter.clientResponse`.
    func stampLocalResponse(_ headers: inout HTTPHeaders, requestID: String, tls: Bool) {
        self.apply(to: &headers)
        headers.replaceOrAdd(name: "x-request-id", value: requestID)
        if tls { headers.replaceOrAdd(name: Self.hsts.name, value: Self.hsts.value) }
    }

    /// `Vary` with `Origin` merged in, keeping every token the response already had
    /// (RFC 9110 §12.5.5); `nil` when nothing needs to change (`*` or `Origin` already there).
    static func mergedVary(_ values: [String]) -> String? {
        // Most upstream responses have no `Vary`.
        if values.isEmpty { return "Origin" }
        var tokens: [Substring] = []
        for value in values {
            for token in value.split(separator: ",") {
                let trimmed = token.trimmingSpaces
                if trimmed.isEmpty { continue }
                if trimmed == "*" || trimmed.lowercased() == "origin" { return nil }
                tokens.append(trimmed)
            }
        }
        tokens.append("Origin")
        return tokens.joined(separator: ", ")
    }
}

/// The `cors` section as the hot path uses it: origin patterns, lookup sets and header values
/// built once at config load (hummingbird's `CORSMiddleware` does the same in its init). Pure;
/// the HTTP/1.1 and HTTP/2 paths both ask it.
///
/// Fetch standard §3.2 (CORS protocol): a preflight is `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`; the gateway answers it itself, before authentication (a
/// browser never sends credentials on a preflight) and without proxying.
final class CORSPolicy: Sendable {
    /// `allowed_origins`, compiled so a match allocates nothing for a lowercase `Origin`.
    private enum Pattern: Sendable {
        case any
        /// With the actual-request fields for this origin, built once: most requests come from one
        /// of a few listed origins, and their fields need no list made per request.
        case exact(String, actualFields: [(String, String)])
        /// `https://*.barberpro.com.ar[:port]` as prefix `https://` and suffix `.barberpro.com.ar[:port]`.
        case wildcard(prefix: String, suffix: String)
    }

    private let patterns: [Pattern]
    let allowedMethods: Set<String>
    /// Lowercased.
    let allowedHeaders: Set<String>
    let allowCredentials: Bool
    /// Preflight answer fields other than `Access-Control-Allow-Origin`.
    let preflightFields: [(String, String)]
    /// Actual-request fields other than `Access-Control-Allow-Origin`.
    let actualFields: [(String, String)]

    init(_ config: CORSConfig) {
        var actual: [(String, String)] = []
        if config.allowCredentials { actual.append(("access-control-allow-credentials", "true")) }
        if let exposed = config.exposeHeadersHeaderValue { actual.append(("access-control-expose-headers", exposed)) }
        self.actualFields = actual
        self.patterns = config.allowedOrigins.map { origin in
            switch origin {
            case .any: .any
            case .exact(let value): .exact(value, actualFields: [("access-control-allow-origin", value)] + actual)
            case .wildcard(let scheme, let domain, let port):
                .wildcard(prefix: scheme + "://", suffix: "." + domain + (port.map { ":\($0)" } ?? ""))
            }
        }
        self.allowedMethods = Set(config.allowedMethods)
        self.allowedHeaders = Set(config.allowedHeaders.map { $0.lowercased() })
        self.allowCredentials = config.allowCredentials
        var preflight: [(String, String)] = [("access-control-allow-methods", config.allowMethodsHeaderValue)]
        if let headers = config.allowHeadersHeaderValue { preflight.append(("access-control-allow-headers", headers)) }
        if config.allowCredentials { preflight.append(("access-control-allow-credentials", "true")) }
        if let maxAge = config.maxAgeHeaderValue { preflight.append(("access-control-max-age", maxAge)) }
        self.preflightFields = preflight
    }

    /// The method a preflight asks about, or `nil` when the request is not a preflight (an
    /// `OPTIONS` without `Access-Control-Request-Method` is an ordinary request).
    static func preflightMethod(method: HTTPMethod, headers: HeadFields) -> String? {
        guard method.isOPTIONS, headers.contains(name: "origin") else { return nil }
        let requested = headers["access-control-request-method"]
        guard requested.count == 1 else { return requested.isEmpty ? nil : "" }
        return requested[0]
    }

    /// The request's `Origin` when it is allowed (exactly one `Origin` field, matching a pattern).
    /// `null` (sandboxed frames, `file:`) only when listed: `*` does not cover it.
    func allowedOrigin(_ headers: HeadFields) -> String? {
        self.match(headers)?.origin
    }

    /// The allowed origin and, when it is a listed one sent as listed, its prebuilt fields.
    private func match(_ headers: HeadFields) -> (origin: String, exactFields: [(String, String)]?)? {
        // Exactly one `Origin` field, found without building the list of them.
        var origins = 0
        var matched: (origin: String, exactFields: [(String, String)]?)? = nil
        headers.forEachValue(of: "origin") { value in
            origins += 1
            guard origins == 1 else { return false }
            matched = self.match(origin: value)
            return true
        }
        return origins == 1 ? matched : nil
    }

    private func match(origin bytes: UnsafeBufferPointer<UInt8>) -> (origin: String, exactFields: [(String, String)]?)? {
        guard !bytes.isEmpty, bytes.count <= 1024 else { return nil }
        // A listed origin sent as listed (what browsers send): its own string and prebuilt
        // fields, with no `String` made of the request's bytes.
        for pattern in self.patterns {
            if case .exact(let allowed, let fields) = pattern, allowed.withUTF8Bytes({ bytesEqual(bytes, $0) }) {
                return (allowed, fields)
            }
        }
        let origin = String(decoding: bytes, as: UTF8.self)
        // Scheme and host compare case-insensitively (they are serialised lowercase by browsers).
        let lower = origin.utf8.contains { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") } ? origin.lowercased() : origin
        // Echoed as sent (a listed origin sent as listed was answered above, with its fields).
        return self.patterns.contains { Self.matches($0, lower) } ? (origin, nil) : nil
    }

    private static func matches(_ pattern: Pattern, _ origin: String) -> Bool {
        switch pattern {
        case .any:
            return origin != "null"
        case .exact(let allowed, _):
            return origin == allowed
        case .wildcard(let prefix, let suffix):
            // A label boundary: `.barberpro.com.ar` must be preceded by at least one whole label,
            // so `evilbarberpro.com.ar` and `barberpro.com.ar.evil.com` fail, and the port (or its
            // absence) must be the pattern's.
            let utf8 = origin.utf8
            guard utf8.count > prefix.utf8.count + suffix.utf8.count, origin.hasPrefix(prefix), origin.hasSuffix(suffix)
            else { return false }
            let start = utf8.index(utf8.startIndex, offsetBy: prefix.utf8.count)
            let end = utf8.index(utf8.endIndex, offsetBy: -suffix.utf8.count)
            return isValidHostname(origin[start..<end])
        }
    }

    enum Preflight {
        /// 204 with these fields.
        case allowed([(String, String)])
        /// 403 `cors_rejected`, without CORS fields (the browser then blocks the request).
        case rejected
    }

    /// Vary for preflight answers: they depend on the origin and on what was asked.
    static let preflightVary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

    func preflight(requestedMethod: String, headers: HeadFields) -> Preflight {
        guard let origin = self.allowedOrigin(headers) else { return .rejected }
        // GET, HEAD and POST are CORS-safelisted methods (Fetch §2.2.1): browsers allow them
        // whatever Allow-Methods says, so refusing them here would protect nothing.
        guard self.allowedMethods.contains(requestedMethod) || ["GET", "HEAD", "POST"].contains(requestedMethod)
        else { return .rejected }
        for value in headers["access-control-request-headers"] {
            for name in value.split(separator: ",") {
                let trimmed = name.trimmingSpaces
                if trimmed.isEmpty { continue }
                guard self.allowedHeaders.contains(trimmed.lowercased()) else { return .rejected }
            }
        }
        var fields: [(String, String)] = [("access-control-allow-origin", origin)]
        fields.append(contentsOf: self.preflightFields)
        return .allowed(fields)
    }

    /// Additions for an actual (non-preflight) request: `Vary: Origin` always; the CORS fields
    /// only for an allowed origin (a disallowed one is served without them, and the browser hides
    /// the response from the page).
    func actual(_ headers: HeadFields) -> ResponseAdditions {
        guard let (origin, exactFields) = self.match(headers) else { return ResponseAdditions(headers: [], corsEnabled: true) }
        if let exactFields { return ResponseAdditions(headers: exactFields, corsEnabled: true) }
        var fields: [(String, String)] = []
        fields.reserveCapacity(1 + self.actualFields.count)
        fields.append(("access-control-allow-origin", origin))
        fields.append(contentsOf: self.actualFields)
        return ResponseAdditions(headers: fields, corsEnabled: true)
    }
}
