import Foundation
internal import Yams

// MARK: - Types

/// `routes[].split`: the upstreams a route's requests are spread over, by weight (blue-green, canary).
public struct RouteSplitConfig: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public let upstream: String
        /// Index of `upstream` in `GatewayConfig.upstreams`.
        public let upstreamIndex: Int
        /// 0...10000; entries are compared by their share of the sum.
        public let weight: Int
    }

    public let entries: [Entry]
    /// `nil`: no stickiness, requests are spread evenly by a per-route sequence.
    public let key: SplitKey?
}

/// `routes[].split_key`: what keeps one user on one side of a split.
public enum SplitKey: Sendable, Equatable, CustomStringConvertible {
    case clientIP
    /// A verified token's claim: `sub`, or a claim listed in `jwt.forward_claims`.
    case claim(String)
    case cookie(String)

    public var description: String {
        switch self {
        case .clientIP: "client_ip"
        case .claim(let name): "claim:\(name)"
        case .cookie(let name): "cookie:\(name)"
        }
    }
}

/// One condition of `match.headers` or `match.cookies`.
public struct FieldCondition: Sendable, Equatable {
    public enum Test: Sendable, Equatable {
        case exact(String)
        case prefix(String)
        case present
        case absent
        /// Whole-value match; the pattern compiled at load.
        case regex(String)
    }

    /// Lowercased for headers; cookie names are case-sensitive (RFC 6265) and kept as written.
    public let name: String
    public let test: Test
}

/// Route keys for long-lived traffic: WebSocket tunnels and streamed responses.
public struct RouteRealtimeConfig: Sendable, Equatable {
    /// Relay `Upgrade: websocket` handshakes and tunnel the connection after the upstream's 101.
    public var websocket = false
    /// The response timeout covers the head only; `streamIdle` bounds the gap between body chunks.
    public var streaming = false
    /// `routes[].timeouts.tunnel_idle`; nil: the top-level `timeouts.tunnel_idle`.
    public var tunnelIdle: Duration? = nil
    /// `routes[].timeouts.stream_idle`.
    public var streamIdle: Duration = .seconds(300)

    public static let defaults = RouteRealtimeConfig()
}

// MARK: - Decoding

extension GatewayConfig {
    /// Route keys this file decodes, appended to the route's own list.
    static let realtimeRouteKeys = ["split", "split_key", "websocket", "streaming", "timeouts"]

    /// `split` and `split_key` of one route; nil without `split`. `upstreamGiven` is whether the
    /// route also names an `upstream` (refused: the split decides it).
    static func decodeSplit(_ m: ConfigMapping, upstreamNames: [String], auth: AuthMode, upstreamGiven: Bool,
                            reader r: ConfigReader) -> RouteSplitConfig? {
        guard let node = m["split"] else {
            if m["split_key"] != nil { r.fail(m.path("split_key"), "needs a split") }
            return nil
        }
        if upstreamGiven {
            r.fail(m.path("upstream"), "a route with a split names no upstream of its own (the split picks it)")
        }
        let listPath = m.path("split")
        guard let items = r.sequence(node, at: listPath) else { return nil }
        if items.isEmpty {
            r.fail(listPath, "must not be empty")
            return nil
        }
        var entries: [RouteSplitConfig.Entry] = []
        var seen: [(key: String, path: String)] = []
        for (index, item) in items.enumerated() {
            let path = "\(listPath)[\(index)]"
            guard let em = r.mapping(item, at: path, keys: ["upstream", "weight"]) else { continue }
            let weight = r.required(em, "weight").flatMap { r.int($0, at: em.path("weight"), range: 0...10_000) }
            guard let upstream = r.required(em, "upstream").flatMap({ r.nonEmptyString($0, at: em.path("upstream")) })
            else { continue }
            seen.append((upstream, em.path("upstream")))
            guard let upstreamIndex = upstreamNames.firstIndex(of: upstream) else {
                r.fail(em.path("upstream"), unknownUpstream(upstream, among: upstreamNames))
                continue
            }
            if let weight { entries.append(.init(upstream: upstream, upstreamIndex: upstreamIndex, weight: weight)) }
        }
        r.reportDuplicates(seen) { "upstream '\($0)' in the split" }
        if entries.count == items.count, entries.allSatisfy({ $0.weight == 0 }) {
            r.fail(listPath, "at least one weight must be above 0")
        }
        let key = m["split_key"].flatMap { splitKey($0, at: m.path("split_key"), auth: auth, reader: r) }
        return RouteSplitConfig(entries: entries, key: key)
    }

    private static func splitKey(_ node: Node, at path: String, auth: AuthMode, reader r: ConfigReader) -> SplitKey? {
        guard let value = r.nonEmptyString(node, at: path) else { return nil }
        if value == "client_ip" { return .clientIP }
        if value.hasPrefix("claim:") {
            let claim = String(value.dropFirst("claim:".count))
            guard !claim.isEmpty else {
                r.fail(path, "expected claim:NAME with a claim name, got '\(value)'")
                return nil
            }
            if auth == .none {
                r.fail(path, "\(value) needs auth: required or optional (claims come from a verified token)")
                return nil
            }
            return .claim(claim)
        }
        if value.hasPrefix("cookie:") {
            let name = String(value.dropFirst("cookie:".count))
            guard isHTTPToken(name) else {
                r.fail(path, "expected cookie:NAME with a cookie name, got '\(value)'")
                return nil
            }
            return .cookie(name)
        }
        var reason = "expected client_ip, claim:NAME or cookie:NAME, got '\(value)'"
        if let suggestion = closestMatch(to: value, in: ["client_ip", "claim:sub"]) {
            reason += " (did you mean '\(suggestion)'?)"
        }
        r.fail(path, reason)
        return nil
    }

    /// A `split_key: claim:NAME` other than `sub` needs the claim in `jwt.forward_claims`: those
    /// are the claims a verified token hands to the router.
    static func checkSplitClaims(_ routes: [RouteConfig], jwt: JWTConfig?, reader r: ConfigReader) {
        let forwarded = jwt?.forwardClaims.map(\.claim) ?? []
        for (index, route) in routes.enumerated() {
            guard case .claim(let claim) = route.split?.key, claim != "sub", !forwarded.contains(claim) else { continue }
            r.fail("routes[\(index)].split_key", "claim '\(claim)' is not in jwt.forward_claims (only sub and forwarded claims can key a split)")
        }
    }

    private static func unknownUpstream(_ name: String, among names: [String]) -> String {
        if let suggestion = closestMatch(to: name, in: names) {
            return "unknown upstream '\(name)' (did you mean '\(suggestion)'?)"
        }
        if names.isEmpty { return "unknown upstream '\(name)' (none defined)" }
        return "unknown upstream '\(name)' (defined: \(names.joined(separator: ", ")))"
    }

    /// `websocket`, `streaming` and the route's `timeouts`.
    static func decodeRouteRealtime(_ m: ConfigMapping, reader r: ConfigReader) -> RouteRealtimeConfig {
        var realtime = RouteRealtimeConfig()
        realtime.websocket = m["websocket"].flatMap { r.bool($0, at: m.path("websocket")) } ?? false
        realtime.streaming = m["streaming"].flatMap { r.bool($0, at: m.path("streaming")) } ?? false
        if let node = m["timeouts"], let tm = r.mapping(node, at: m.path("timeouts"), keys: ["tunnel_idle", "stream_idle"]) {
            realtime.tunnelIdle = tm["tunnel_idle"].flatMap { r.duration($0, at: tm.path("tunnel_idle"), minimum: .seconds(1)) }
            if let node = tm["stream_idle"], let value = r.duration(node, at: tm.path("stream_idle"), minimum: .milliseconds(10)) {
                realtime.streamIdle = value
            }
            if tm["tunnel_idle"] != nil, !realtime.websocket {
                r.fail(tm.path("tunnel_idle"), "only applies to a route with websocket: true")
            }
        }
        return realtime
    }

    /// `match.headers` or `match.cookies`: a mapping of name → condition, where the condition is a
    /// string (exact) or one of `{exact: V}`, `{prefix: V}`, `{regex: V}`, `{present: true}`,
    /// `{absent: true}`.
    static func fieldConditions(_ node: Node, at path: String, cookies: Bool, reader r: ConfigReader) -> [FieldCondition] {
        guard let map = r.mapping(node, at: path, keys: nil) else { return [] }
        var conditions: [FieldCondition] = []
        for (rawName, value) in map.entries {
            let itemPath = map.path(rawName)
            guard isHTTPToken(rawName) else {
                r.fail(itemPath, cookies ? "expected a cookie name" : "expected a header name")
                continue
            }
            let name = cookies ? rawName : rawName.lowercased()
            if case .scalar = value {
                if let text = r.text(value, at: itemPath) { conditions.append(.init(name: name, test: .exact(text))) }
                continue
            }
            guard let cm = r.mapping(value, at: itemPath, keys: ["exact", "prefix", "regex", "present", "absent"]) else { continue }
            guard cm.entries.count == 1, let (kind, node) = cm.entries.first else {
                r.fail(itemPath, "expected exactly one of exact, prefix, regex, present, absent")
                continue
            }
            let kindPath = cm.path(kind)
            switch kind {
            case "exact":
                if let text = r.text(node, at: kindPath) { conditions.append(.init(name: name, test: .exact(text))) }
            case "prefix":
                if let text = r.nonEmptyString(node, at: kindPath) { conditions.append(.init(name: name, test: .prefix(text))) }
            case "regex":
                guard let pattern = r.nonEmptyString(node, at: kindPath) else { continue }
                do {
                    _ = try Regex(pattern)
                    conditions.append(.init(name: name, test: .regex(pattern)))
                } catch {
                    r.fail(kindPath, "invalid regular expression '\(pattern)': \(error)")
                }
            default:
                // `present: false` and `absent: true` say the same.
                guard let flag = r.bool(node, at: kindPath) else { continue }
                conditions.append(.init(name: name, test: (kind == "present") == flag ? .present : .absent))
            }
        }
        return conditions
    }
}
