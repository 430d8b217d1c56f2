/// Which hosts a route answers for. Ordered by specificity: exact > wildcard > any (SPEC "routes").
enum HostPattern: Sendable, Equatable {
    case any
    /// `*.barberpro.com.ar` stored as the suffix `.barberpro.com.ar`: matches one or more labels in
    /// front of it, never the bare domain.
    case wildcard(suffix: String)
    case exact(String)

    init(_ pattern: String?) {
        guard let pattern, !pattern.isEmpty else {
            self = .any
            return
        }
        let lowered = pattern.lowercased()
        if lowered.hasPrefix("*.") {
            self = .wildcard(suffix: String(lowered.dropFirst()))
        } else {
            self = .exact(lowered)
        }
    }

    var specificity: Int {
        switch self {
        case .any: 0
        case .wildcard: 1
        case .exact: 2
        }
    }

    /// `host` must already be normalised (lowercase, no port, no trailing dot).
    func matches(_ host: Substring) -> Bool {
        switch self {
        case .any: true
        case .exact(let name): host == name
        case .wildcard(let suffix): host.count > suffix.count && host.hasSuffix(suffix)
        }
    }
}

import NIOHTTP1

/// A route resolved at config load: everything the hot path needs, nothing to recompute per request.
final class Route: Sendable {
    let name: String
    let host: HostPattern
    let pathPrefix: String
    /// nil = every method.
    let methods: Set<String>?
    let upstreamName: String
    /// The route's `rate_limits`, in the order listed.
    let rateLimits: [RateLimitRule]
    let order: Int
    let auth: AuthMode
    /// Claim → accepted values (`require_claims`); empty = any valid token.
    let requiredClaims: [String: [String]]
    /// The `cors` section when it applies to this route (`nil`: no section, or `cors: false`).
    let cors: CORSPolicy?
    /// `providers`, `require_scopes`, `allow_token_sources`.
    let identity: RouteIdentityConfig
    /// `match.headers` and `match.cookies`, all of which must hold.
    let conditions: [RequestCondition]
    /// `split`: the upstream is picked per request; `upstreamName` is its first entry.
    let split: TrafficSplit?
    /// `websocket`, `streaming` and the route's own timeouts.
    let realtime: RouteRealtimeConfig
    /// `cache`: nil on a route without one (its requests never touch the cache).
    let cache: ResponseCache?
    /// Where its requests are counted (`gateway_requests_total` and its histograms); nil when
    /// built without metrics (tests), and the request is counted by the route's name.
    let series: RouteSeries?
    /// The cluster `upstreamName` names, resolved at config load from the same snapshot's
    /// clusters (no string hashed per request); nil when built without one (tests): looked up by name.
    let cluster: UpstreamCluster?

    init(
        name: String, host: String?, pathPrefix: String, methods: [String]?, upstreamName: String, order: Int,
        auth: AuthMode = .none, requiredClaims: [String: [String]] = [:], cors: CORSPolicy? = nil,
        rateLimits: [RateLimitRule] = [], conditions: [RequestCondition] = [], split: TrafficSplit? = nil,
        realtime: RouteRealtimeConfig = .defaults,
        identity: RouteIdentityConfig = RouteIdentityConfig(),
        cache: ResponseCache? = nil, series: RouteSeries? = nil, cluster: UpstreamCluster? = nil
    ) {
        self.series = series
        self.cluster = cluster
        self.conditions = conditions
        self.split = split
        self.realtime = realtime
        self.identity = identity
        self.cache = cache
        self.rateLimits = rateLimits
        self.name = name
        self.host = HostPattern(host)
        self.pathPrefix = pathPrefix
        self.methods = methods.map { Set($0.map { $0.uppercased() }) }
        self.upstreamName = upstreamName
        self.order = order
        self.auth = auth
        self.requiredClaims = requiredClaims
        self.cors = cors
    }

    /// Segment-aware prefix: `/api/auth/login` matches `/api/auth/login` and `/api/auth/login/x`
    /// but not `/api/auth/login2` (a prefix ending in `/` is a plain prefix). Safer than Envoy's raw
    /// `prefix`, which would let `/api/auth/loginx` ride the login route's policies.
    func matchesPath(_ path: Substring) -> Bool {
        // Compared as bytes: the generic `hasPrefix` and `hasSuffix` walk the views element by
        // element and check grapheme boundaries, once per route per request.
        path.withUTF8Bytes { path in
            self.pathPrefix.withUTF8Bytes { prefix in
                guard path.count >= prefix.count, bytesEqual(UnsafeBufferPointer(rebasing: path[..<prefix.count]), prefix) else {
                    return false
                }
                return path.count == prefix.count || (prefix.count > 0 && prefix[prefix.count - 1] == UInt8(ascii: "/")) || path[prefix.count] == UInt8(ascii: "/")
            }
        }
    }

    /// Named only when the route lists methods.
    func matchesMethod(_ method: HTTPMethod) -> Bool {
        guard let methods = self.methods else { return true }
        return methods.contains(method.rawValue)
    }

    func matchesConditions(_ headers: HeadFields) -> Bool {
        for condition in self.conditions where !condition.matches(headers) { return false }
        return true
    }
}

/// Outcome of matching one request against the route table.
enum RouteLookup {
    case matched(Route)
    /// Some route matches host and path but none the method: answer 405 with `Allow`.
    case methodNotAllowed(allow: [String])
    case notFound
}

/// Routes sorted once by precedence (exact host > `*.domain` > any host, then longest
/// `path_prefix`, then more `match.headers`/`match.cookies` conditions, then file order), so
/// matching is a linear scan that stops at the first hit. A flagged route therefore wins over the
/// same route without flags, whatever their order in the file.
final class RouteTable: Sendable {
    let routes: [Route]
    /// Some route names a host: otherwise the request's host is never looked at (not normalized).
    private let hostsMatter: Bool

    init(_ routes: [Route]) {
        self.hostsMatter = routes.contains { $0.host != .any }
        self.routes = routes.sorted { a, b in
            if a.host.specificity != b.host.specificity { return a.host.specificity > b.host.specificity }
            if a.pathPrefix.utf8.count != b.pathPrefix.utf8.count {
                return a.pathPrefix.utf8.count > b.pathPrefix.utf8.count
            }
            if a.conditions.count != b.conditions.count { return a.conditions.count > b.conditions.count }
            return a.order < b.order
        }
    }

    /// - Parameters:
    ///   - host: the request's host (`Host` or `:authority`), any case, with or without port.
    ///   - path: the path without query string.
    ///   - headers: for `match.headers` and `match.cookies`; a route whose conditions fail is
    ///     skipped as if its path did not match (it plays no part in a 405).
    func match(host rawHost: String?, path: Substring, method: String, headers: HeadFields = [:]) -> RouteLookup {
        self.match(host: rawHost, path: path, method: HTTPMethod(rawValue: method), headers: headers)
    }

    /// `match` for a parsed method.
    func match(host rawHost: String?, path: Substring, method: HTTPMethod, headers: HeadFields = [:]) -> RouteLookup {
        let host = self.hostsMatter ? Self.normalizeHost(rawHost) : ""
        var allowed: [String]? = nil
        for route in self.routes where route.host.matches(host) && route.matchesPath(path) {
            if !route.conditions.isEmpty, !route.matchesConditions(headers) { continue }
            if route.matchesMethod(method) { return .matched(route) }
            if allowed == nil { allowed = [] }
            allowed!.append(contentsOf: route.methods ?? [])
        }
        if var allowed {
            allowed = Array(Set(allowed)).sorted()
            return .methodNotAllowed(allow: allowed)
        }
        return .notFound
    }

    /// Lowercase, without port and trailing dot; IPv6 literals keep their brackets.
    static func normalizeHost(_ raw: String?) -> Substring {
        guard let raw, !raw.isEmpty else { return "" }
        // The common case in one pass over the bytes: where the name ends, and whether it has
        // capitals (then the slower path below lowercases it).
        let end: Int? = raw.utf8.withContiguousStorageIfAvailable { bytes in
            var end = bytes.count
            if bytes[0] == UInt8(ascii: "[") {
                guard let close = bytes.firstIndex(of: UInt8(ascii: "]")) else { return nil }
                end = close + 1
            } else {
                var index = end - 1
                while index >= 0, bytes[index] != UInt8(ascii: ":") { index -= 1 }
                if index >= 0 { end = index }
            }
            if end > 0, bytes[end - 1] == UInt8(ascii: ".") { end -= 1 }
            for index in 0..<end where bytes[index] >= UInt8(ascii: "A") && bytes[index] <= UInt8(ascii: "Z") { return nil }
            return end
        } ?? nil
        if let end {
            let utf8 = raw.utf8
            return Substring(utf8[utf8.startIndex..<utf8.index(utf8.startIndex, offsetBy: end)])
        }
        // Searched as bytes: `Character` searches walk grapheme clusters (this runs per request).
        var host = Substring(raw)
        let bytes = host.utf8
        if bytes.first == UInt8(ascii: "[") {
            if let close = bytes.firstIndex(of: UInt8(ascii: "]")) { host = host[...close] }
        } else if let colon = bytes.lastIndex(of: UInt8(ascii: ":")) {
            host = host[..<colon]
        }
        if host.utf8.last == UInt8(ascii: ".") { host = host[..<host.utf8.index(before: host.utf8.endIndex)] }
        if host.utf8.contains(where: { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }) {
            return Substring(host.lowercased())
        }
        return host
    }
}
