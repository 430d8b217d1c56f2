import Foundation
internal import Yams

// MARK: - Types

/// Where a bearer token may be read from (`jwt.sources`), tried in the listed order.
public enum TokenSource: Sendable, Equatable, CustomStringConvertible {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1).
    case header
    /// The cookie `NAME` (browsers carrying the session in an `HttpOnly` cookie).
    case cookie(String)
    /// The query parameter `NAME`; only on routes listing `query` in `allow_token_sources`.
    case query(String)
    /// The browser WebSocket form `Sec-WebSocket-Protocol: bearer, <token>[, app-protocol…]`; only on
    /// routes listing `websocket_protocol` in `allow_token_sources`.
    case websocketProtocol

    /// Sources a route must opt into: a URL ends up in logs and history, and the subprotocol form
    /// only makes sense on a WebSocket handshake.
    public var needsRouteOptIn: Bool {
        switch self {
        case .query, .websocketProtocol: true
        case .header, .cookie: false
        }
    }

    public var description: String {
        switch self {
        case .header: "header"
        case .cookie(let name): "cookie:\(name)"
        case .query(let name): "query:\(name)"
        case .websocketProtocol: "websocket_protocol"
        }
    }
}

/// The identity parts of the `jwt` section beyond the single issuer: token sources, whether the
/// token is forwarded, and several issuers (`providers`).
public struct JWTIdentityConfig: Sendable, Equatable {
    /// Default `[header]`.
    public var sources: [TokenSource] = [.header]
    /// Keep the token in what is forwarded upstream (default: removed from the field, cookie or
    /// query parameter it was read from).
    public var forwardToken = false
    /// Empty in the single-issuer form; the token's `iss` picks one of these.
    public var providers: [JWTProviderConfig] = []

    public init() {}
}

/// One issuer of `jwt.providers`: its own audiences, keys and clock rules.
public struct JWTProviderConfig: Sendable, Equatable {
    public var name: String
    public var issuer: String
    public var audiences: [String]
    public var leeway: Duration
    public var maxLifetime: Duration
    public var keys: [JWTKeyConfig]
    /// HTTPS JWKS document, refreshed in the background.
    public var jwksURL: String?
    /// HTTPS OIDC discovery document (`…/.well-known/openid-configuration`); its `jwks_uri` is
    /// fetched and both are refreshed like `jwks_url`.
    public var discoveryURL: String?
    public var jwksCA: String?
    public var jwksRefresh: JWKSRefreshConfig
}

/// `routes[].require_scopes: {any: [...], all: [...]}` against the token's `scope` (or `scp`).
public struct ScopeRequirement: Sendable, Equatable {
    public var any: [String] = []
    public var all: [String] = []

    public var isEmpty: Bool { any.isEmpty && all.isEmpty }
}

/// A route's identity options.
public struct RouteIdentityConfig: Sendable, Equatable {
    /// Names of `jwt.providers` whose tokens this route accepts (`nil`: all of them).
    public var providers: [String]? = nil
    public var requireScopes = ScopeRequirement()
    /// The opt-in token sources (`query`, `websocket_protocol`) this route accepts.
    public var allowedTokenSources: [String] = []

    public init() {}

    /// Whether `source` may be used on this route.
    public func allows(_ source: TokenSource) -> Bool {
        switch source {
        case .header, .cookie: true
        case .query: allowedTokenSources.contains("query")
        case .websocketProtocol: allowedTokenSources.contains("websocket_protocol")
        }
    }
}

/// A policy whose limit depends on a claim: `tier_claim: plan`, `tiers: {free: 100/15m, pro:
/// {limit: 1000, window: 15m}}`, `default_tier: free` (anonymous requests, tokens without the
/// claim, and values that name no tier).
public struct RateLimitTiersConfig: Sendable, Equatable {
    public struct Tier: Sendable, Equatable {
        public let name: String
        public let limit: Int
        public let window: Duration
    }

    /// Dotted claim path.
    public let claim: String
    /// In file order.
    public let tiers: [Tier]
    public let defaultTier: String

    public var defaultLimit: Tier { tiers.first { $0.name == defaultTier }! }
}

// MARK: - Decoding

extension GatewayConfig {
    static let identityJWTKeys = ["sources", "forward_token", "providers"]
    static let identityRouteKeys = ["providers", "require_scopes", "allow_token_sources"]
    static let tierPolicyKeys = ["tier_claim", "tiers", "default_tier"]

    /// `jwt.sources` and `jwt.forward_token` (the providers are decoded by `decodeJWTProviders`).
    static func decodeJWTIdentity(_ m: ConfigMapping, reader r: ConfigReader) -> JWTIdentityConfig {
        var identity = JWTIdentityConfig()
        if let node = m["sources"] {
            let path = m.path("sources")
            identity.sources = r.list(node, at: path, nonEmpty: true) { tokenSource($0, at: $1, reader: r) } ?? [.header]
            r.reportDuplicates(identity.sources.enumerated().map { ($1.description, "\(path)[\($0)]") }) { "source '\($0)'" }
        }
        identity.forwardToken = m["forward_token"].flatMap { r.bool($0, at: m.path("forward_token")) } ?? false
        return identity
    }

    private static func tokenSource(_ node: Node, at path: String, reader r: ConfigReader) -> TokenSource? {
        guard let value = r.nonEmptyString(node, at: path) else { return nil }
        switch value {
        case "header": return .header
        case "websocket_protocol": return .websocketProtocol
        default: break
        }
        for (prefix, make) in [("cookie:", TokenSource.cookie), ("query:", TokenSource.query)] where value.hasPrefix(prefix) {
            let name = String(value.dropFirst(prefix.count))
            guard isHTTPToken(name) else {
                r.fail(path, "expected \(prefix)NAME with a \(prefix.dropLast()) name made of token characters, got '\(value)'")
                return nil
            }
            return make(name)
        }
        var reason = "expected header, cookie:NAME, query:NAME or websocket_protocol, got '\(value)'"
        if let suggestion = closestMatch(to: value, in: ["header", "websocket_protocol"]) {
            reason += " (did you mean '\(suggestion)'?)"
        }
        r.fail(path, reason)
        return nil
    }

    /// The `jwt` section in its several-issuer form: `providers` replaces the single issuer's
    /// `issuer`, `audiences`, `keys`, `jwks_*`, `leeway` and `max_lifetime`.
    static func decodeJWTProviders(_ m: ConfigMapping, forwardClaims: [ForwardedClaim], reader r: ConfigReader) -> JWTConfig? {
        for key in ["issuer", "audiences", "leeway", "max_lifetime", "keys", "jwks_url", "jwks_ca", "jwks_refresh"]
        where m[key] != nil {
            r.fail(m.path(key), "cannot be combined with jwt.providers (set it on each provider)")
        }
        guard let node = m["providers"] else { return nil }
        let path = m.path("providers")
        let providers = r.list(node, at: path, nonEmpty: true) { provider($0, at: $1, reader: r) } ?? []
        r.reportDuplicates(providers.enumerated().map { ($1.name, "\(path)[\($0)].name") }) { "provider '\($0)'" }
        r.reportDuplicates(providers.enumerated().map { ($1.issuer, "\(path)[\($0)].issuer") }) { "issuer '\($0)'" }
        guard let first = providers.first else { return nil }
        var config = JWTConfig(
            issuer: first.issuer, audiences: first.audiences, leeway: first.leeway, maxLifetime: first.maxLifetime,
            keys: [], jwksURL: nil, forwardClaims: forwardClaims)
        config.identity = decodeJWTIdentity(m, reader: r)
        config.identity.providers = providers
        return config
    }

    /// `issuer`, `audiences`, `leeway` and `max_lifetime`, read alike in `jwt` and in each provider.
    static func tokenRules(
        _ m: ConfigMapping, reader r: ConfigReader
    ) -> (issuer: String?, audiences: [String]?, leeway: Duration, maxLifetime: Duration) {
        let issuer = r.required(m, "issuer").flatMap { r.nonEmptyString($0, at: m.path("issuer")) }
        let audiences = r.required(m, "audiences").flatMap {
            r.list($0, at: m.path("audiences"), nonEmpty: true) { r.nonEmptyString($0, at: $1) }
        }
        let leeway = m["leeway"].flatMap {
            r.duration($0, at: m.path("leeway"), minimum: .zero, maximum: .seconds(300))
        } ?? .seconds(30)
        let maxLifetime = m["max_lifetime"].flatMap {
            r.duration($0, at: m.path("max_lifetime"), minimum: .seconds(1))
        } ?? .seconds(7 * 86_400)
        return (issuer, audiences, leeway, maxLifetime)
    }

    private static func provider(_ node: Node, at path: String, reader r: ConfigReader) -> JWTProviderConfig? {
        guard let m = r.mapping(node, at: path, keys: ["name", "issuer", "audiences", "keys", "jwks_url", "discovery_url",
                                                       "jwks_ca", "jwks_refresh", "leeway", "max_lifetime"])
        else { return nil }
        let name = r.required(m, "name").flatMap { r.name($0, at: m.path("name")) }
        let (issuer, audiences, leeway, maxLifetime) = tokenRules(m, reader: r)
        let jwksURL = m["jwks_url"].flatMap { httpsURL($0, at: m.path("jwks_url"), reader: r) }
        let discoveryURL = m["discovery_url"].flatMap { httpsURL($0, at: m.path("discovery_url"), reader: r) }
        if m["jwks_url"] != nil, m["discovery_url"] != nil {
            r.fail(m.path("discovery_url"), "set jwks_url or discovery_url, not both (discovery finds the JWKS)")
        }
        let remote = m["jwks_url"] != nil || m["discovery_url"] != nil
        let jwksCA = m["jwks_ca"].flatMap { r.file($0, at: m.path("jwks_ca")) }
        if m["jwks_ca"] != nil, !remote { r.fail(m.path("jwks_ca"), "only applies with jwks_url or discovery_url") }
        var refresh = JWKSRefreshConfig()
        if let node = m["jwks_refresh"] {
            if !remote { r.fail(m.path("jwks_refresh"), "only applies with jwks_url or discovery_url") }
            refresh = decodeJWKSRefresh(node, at: m.path("jwks_refresh"), reader: r)
        }
        var keys: [JWTKeyConfig] = []
        if let node = m["keys"] {
            keys = r.list(node, at: m.path("keys"), nonEmpty: !remote) { jwtKey($0, at: $1, reader: r) } ?? []
            r.reportDuplicates(keys.enumerated().map { ($1.kid, "\(m.path("keys"))[\($0)].kid") }) { "kid '\($0)'" }
        } else if !remote {
            r.fail(m.path("keys"), "missing required key (or set jwks_url or discovery_url)")
        }
        guard let name, let issuer, let audiences else { return nil }
        return JWTProviderConfig(
            name: name, issuer: issuer, audiences: audiences, leeway: leeway, maxLifetime: maxLifetime, keys: keys,
            jwksURL: jwksURL, discoveryURL: discoveryURL, jwksCA: jwksCA, jwksRefresh: refresh)
    }

    /// Keys fetched over plain HTTP could be swapped by anyone on the path.
    private static func httpsURL(_ node: Node, at path: String, reader r: ConfigReader) -> String? {
        guard let url = r.nonEmptyString(node, at: path) else { return nil }
        guard url.hasPrefix("https://"), URL(string: url)?.host.map({ !$0.isEmpty }) == true else {
            r.fail(path, "must be an https:// URL, got '\(url)'")
            return nil
        }
        return url
    }

    /// `providers`, `require_scopes` and `allow_token_sources` of one route. `jwt` is the decoded
    /// section (nil when absent or invalid: cross checks are then skipped, its errors already stand).
    static func decodeRouteIdentity(_ m: ConfigMapping, auth: AuthMode, jwtNode: Node?, reader r: ConfigReader) -> RouteIdentityConfig {
        var identity = RouteIdentityConfig()
        let needsAuth = "needs auth: required or optional (it applies to a verified token)"
        if let node = m["providers"] {
            identity.providers = r.list(node, at: m.path("providers"), nonEmpty: true) { r.name($0, at: $1) }
            if auth == .none { r.fail(m.path("providers"), needsAuth) }
            let known = providerNames(jwtNode)
            if known.isEmpty, jwtNode != nil {
                r.fail(m.path("providers"), "needs jwt.providers (the single-issuer jwt section has no provider names)")
            } else {
                for (index, name) in (identity.providers ?? []).enumerated() where !known.isEmpty && !known.contains(name) {
                    r.fail("\(m.path("providers"))[\(index)]", unknown("provider", name, among: known))
                }
            }
        }
        if let node = m["require_scopes"], let map = r.mapping(node, at: m.path("require_scopes"), keys: ["any", "all"]) {
            if let any = map["any"] {
                identity.requireScopes.any = r.list(any, at: map.path("any"), nonEmpty: true) { scope($0, at: $1, reader: r) } ?? []
            }
            if let all = map["all"] {
                identity.requireScopes.all = r.list(all, at: map.path("all"), nonEmpty: true) { scope($0, at: $1, reader: r) } ?? []
            }
            if map.entries.isEmpty { r.fail(m.path("require_scopes"), "expected any: [...] and/or all: [...]") }
            if auth == .none { r.fail(m.path("require_scopes"), needsAuth) }
        }
        if let node = m["allow_token_sources"] {
            let path = m.path("allow_token_sources")
            let kinds = ["query", "websocket_protocol"]
            identity.allowedTokenSources = r.list(node, at: path, nonEmpty: true) { item, itemPath -> String? in
                guard let kind = r.nonEmptyString(item, at: itemPath) else { return nil }
                guard kinds.contains(kind) else {
                    var reason = "expected query or websocket_protocol, got '\(kind)'"
                    if let suggestion = closestMatch(to: kind, in: kinds) { reason += " (did you mean '\(suggestion)'?)" }
                    r.fail(itemPath, reason)
                    return nil
                }
                return kind
            } ?? []
            if auth == .none { r.fail(path, needsAuth) }
        }
        return identity
    }

    /// Scopes are `scope-token`s (RFC 6749 §3.3): printable ASCII without space, `"` or `\`.
    private static func scope(_ node: Node, at path: String, reader r: ConfigReader) -> String? {
        guard let value = r.nonEmptyString(node, at: path) else { return nil }
        guard value.utf8.allSatisfy({ $0 == 0x21 || (0x23...0x5B).contains($0) || (0x5D...0x7E).contains($0) }) else {
            r.fail(path, "a scope is printable ASCII without spaces, '\"' or '\\', got '\(value)'")
            return nil
        }
        return value
    }

    /// Provider names as written, for cross references (read from the raw node so one bad provider
    /// does not turn every route's reference into an error).
    private static func providerNames(_ jwtNode: Node?) -> [String] {
        guard case .mapping(let jwt)? = jwtNode,
              case .sequence(let list)? = jwt.first(where: { $0.key.string == "providers" })?.value
        else { return [] }
        return list.compactMap { item in
            guard case .mapping(let provider) = item else { return nil }
            return provider.first(where: { $0.key.string == "name" })?.value.string
        }
    }

    /// `tier_claim`, `tiers`, `default_tier` of one policy that has at least one of them; nil after
    /// an error.
    static func decodeTiers(_ m: ConfigMapping, reader r: ConfigReader) -> RateLimitTiersConfig? {
        for key in ["limit", "window"] where m[key] != nil {
            r.fail(m.path(key), "a tiered policy sets limit and window per tier (tiers: {NAME: LIMIT/WINDOW})")
        }
        let claim = r.required(m, "tier_claim").flatMap { r.nonEmptyString($0, at: m.path("tier_claim")) }
        let defaultTier = r.required(m, "default_tier").flatMap { r.nonEmptyString($0, at: m.path("default_tier")) }
        var tiers: [RateLimitTiersConfig.Tier] = []
        if let node = r.required(m, "tiers"), let map = r.mapping(node, at: m.path("tiers"), keys: nil) {
            if map.entries.isEmpty { r.fail(m.path("tiers"), "at least one tier is required") }
            for (name, value) in map.entries {
                if let tier = tier(name: name, value, at: map.path(name), reader: r) { tiers.append(tier) }
            }
            if let defaultTier, !map.entries.contains(where: { $0.key == defaultTier }) {
                r.fail(m.path("default_tier"), unknown("tier", defaultTier, among: map.entries.map(\.key)))
            }
        }
        guard let claim, let defaultTier, tiers.contains(where: { $0.name == defaultTier }) else { return nil }
        return RateLimitTiersConfig(claim: claim, tiers: tiers, defaultTier: defaultTier)
    }

    /// `LIMIT/WINDOW` (`100/15m`) or `{limit, window}`.
    private static func tier(name: String, _ node: Node, at path: String, reader r: ConfigReader) -> RateLimitTiersConfig.Tier? {
        if case .scalar(let scalar) = node {
            let parts = scalar.string.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2, let limit = Int(parts[0]), (1...1_000_000_000).contains(limit),
                  let window = ConfigSyntax.duration(String(parts[1])), window >= .seconds(1),
                  window.components.attoseconds == 0
            else {
                r.fail(path, "expected LIMIT/WINDOW such as 100/15m (a limit >= 1, a window of whole seconds >= 1s), "
                    + "got '\(scalar.string)'")
                return nil
            }
            return .init(name: name, limit: limit, window: window)
        }
        guard let m = r.mapping(node, at: path, keys: ["limit", "window"]) else { return nil }
        let limit = r.required(m, "limit").flatMap { r.int($0, at: m.path("limit"), range: 1...1_000_000_000) }
        let window = r.required(m, "window").flatMap {
            r.duration($0, at: m.path("window"), minimum: .seconds(1), wholeSeconds: true)
        }
        guard let limit, let window else { return nil }
        return .init(name: name, limit: limit, window: window)
    }
}
