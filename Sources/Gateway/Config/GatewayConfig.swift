/// The whole gateway configuration: one immutable, validated snapshot of `gateway.yaml`.
///
/// Built only by `ConfigLoader` (see `GatewayConfig+YAML.swift`), which validates the file whole
/// before any socket binds. A reload builds a new snapshot and swaps it atomically; the hot path
/// reads it without locks, which is why every type here is a `Sendable` value with `let` fields.
/// Values the hot path needs per request (CORS header strings, route → upstream/policy indices) are
/// derived once here at load time, never per request.
public struct GatewayConfig: Sendable, Equatable {
    /// Event loops; defaults to the number of active CPU cores.
    public let workers: Int
    /// Public listeners, in file order.
    public let listeners: [ListenerConfig]
    public let admin: AdminConfig
    public let clientIP: ClientIPConfig
    public let limits: LimitsConfig
    public let timeouts: TimeoutsConfig
    public let redis: RedisConfig
    /// `nil` when the file has no `cors` section: no route answers CORS.
    public let cors: CORSConfig?
    /// `nil` when the file has no `jwt` section: only `auth: none` routes are allowed.
    public let jwt: JWTConfig?
    public let rateLimits: RateLimitsConfig
    /// Upstreams in file order; `RouteConfig.upstreamIndex` points into this array.
    public let upstreams: [UpstreamConfig]
    /// Routes in file order (file order breaks ties between equally specific routes).
    public let routes: [RouteConfig]
    public let log: LogConfig
    public let tracing: TracingConfig

    public func upstream(named name: String) -> UpstreamConfig? {
        upstreams.first { $0.name == name }
    }

    public func policy(named name: String) -> RateLimitPolicy? {
        rateLimits.policies.first { $0.name == name }
    }
}

/// `log`: the access log (one JSON line per request on stdout).
public struct LogConfig: Sendable, Equatable {
    public let access: Bool
    public var level: OperatorLogLevel = .info
    public var format: OperatorLogFormat = .text
    public static let defaults = LogConfig(access: true)
}

// MARK: - Listeners

public struct ListenerConfig: Sendable, Equatable {
    public let name: String
    public let address: HostPort
    /// ALPN preference order. Defaults to `[h2, http/1.1]` with TLS, `[http/1.1]` without.
    public let protocols: [ApplicationProtocol]
    public let tls: TLSConfig?
    /// Answer every request (except `/health*`) with a 308 to `https://`. Only without `tls`.
    public let redirectToHTTPS: Bool
    /// HTTP/2 limits for this listener (used when it speaks `h2` or `h2c`).
    public let http2: HTTP2Config
}

/// Per-listener HTTP/2 limits; defaults are the safe ones (see docs/configuration.md).
public struct HTTP2Config: Sendable, Equatable {
    public let maxConcurrentStreams: Int
    public let initialWindowSize: Int
    /// Defaults to `limits.max_header_bytes`.
    public let maxHeaderListSize: Int?
    /// RST_STREAM frames a client may send in a burst, and per second after it (rapid reset).
    public let resetBurst: Int
    public let resetRate: Int

    public static let defaults = HTTP2Config(
        maxConcurrentStreams: 128, initialWindowSize: 256 * 1024, maxHeaderListSize: nil, resetBurst: 200, resetRate: 50
    )
}

/// Application protocols a listener speaks; the raw value is the ALPN identifier (RFC 7301 §6).
public enum ApplicationProtocol: String, Sendable, Equatable, CaseIterable {
    case h2 = "h2"
    case http1_1 = "http/1.1"
    /// HTTP/2 over cleartext with prior knowledge (RFC 9113 §3.3); only on listeners without TLS.
    case h2c = "h2c"
}

public struct TLSConfig: Sendable, Equatable {
    public let minVersion: TLSVersion
    /// First is the default; the others are picked by SNI.
    public let certificates: [CertificateConfig]
    public let handshakeTimeout: Duration
}

public enum TLSVersion: String, Sendable, Equatable, CaseIterable {
    case v1_2 = "1.2"
    case v1_3 = "1.3"
}

public struct CertificateConfig: Sendable, Equatable {
    /// Absolute path of the PEM certificate chain (relative paths are resolved against the config's directory).
    public let cert: String
    /// Absolute path of the PEM private key.
    public let key: String
}

public struct AdminConfig: Sendable, Equatable {
    public let address: HostPort
}

// MARK: - Client IP, limits, timeouts, Redis

public struct ClientIPConfig: Sendable, Equatable {
    /// Peers whose forwarding headers are believed.
    public let trustedProxies: [TrustedProxy]
    /// Lowercased header carrying the client IP from a trusted proxy.
    public let header: String
}

public enum TrustedProxy: Sendable, Equatable {
    case network(IPNetwork)
    /// Cloudflare's published ranges, shipped in the repository with the date they were taken.
    case cloudflare
}

public struct LimitsConfig: Sendable, Equatable {
    public let maxHeaderBytes: Int
    public let maxBodyBytes: Int
}

public struct TimeoutsConfig: Sendable, Equatable {
    public let clientHeader: Duration
    public let idle: Duration
    public let drain: Duration
    public var tunnelIdle: Duration = .seconds(3600)
    public var drainDelay: Duration = OperationsDefaults.drainDelay
}

// MARK: - CORS

public struct CORSConfig: Sendable, Equatable {
    public let allowedOrigins: [CORSOrigin]
    /// Uppercase method tokens.
    public let allowedMethods: [String]
    /// Lowercased header names.
    public let allowedHeaders: [String]
    /// Lowercased header names.
    public let exposedHeaders: [String]
    public let allowCredentials: Bool
    /// `nil` → no `Access-Control-Max-Age` (browsers then cache for 5 s).
    public let maxAge: Duration?

    // Header values derived once at load (hummingbird CORSMiddleware builds them in init too).
    /// `Access-Control-Allow-Methods` value, e.g. `GET, POST`.
    public let allowMethodsHeaderValue: String
    /// `Access-Control-Allow-Headers` value, or `nil` when the list is empty.
    public let allowHeadersHeaderValue: String?
    /// `Access-Control-Expose-Headers` value, or `nil` when the list is empty.
    public let exposeHeadersHeaderValue: String?
    /// `Access-Control-Max-Age` value in whole seconds.
    public let maxAgeHeaderValue: String?

    init(allowedOrigins: [CORSOrigin], allowedMethods: [String], allowedHeaders: [String],
         exposedHeaders: [String], allowCredentials: Bool, maxAge: Duration?) {
        self.allowedOrigins = allowedOrigins
        self.allowedMethods = allowedMethods
        self.allowedHeaders = allowedHeaders
        self.exposedHeaders = exposedHeaders
        self.allowCredentials = allowCredentials
        self.maxAge = maxAge
        self.allowMethodsHeaderValue = allowedMethods.joined(separator: ", ")
        self.allowHeadersHeaderValue = allowedHeaders.isEmpty ? nil : allowedHeaders.joined(separator: ", ")
        self.exposeHeadersHeaderValue = exposedHeaders.isEmpty ? nil : exposedHeaders.joined(separator: ", ")
        self.maxAgeHeaderValue = maxAge.map { String($0.components.seconds) }
    }

    /// Whether a request `Origin` (as the browser sent it) is allowed.
    public func allows(origin: String) -> Bool {
        allowedOrigins.contains { $0.matches(origin) }
    }
}

// MARK: - JWT

public struct JWTConfig: Sendable, Equatable {
    public let issuer: String
    public let audiences: [String]
    public let leeway: Duration
    /// Largest accepted `exp - iat`.
    public let maxLifetime: Duration
    public let keys: [JWTKeyConfig]
    /// HTTPS only; keys fetched from it are added to `keys` in the background.
    public let jwksURL: String?
    /// Absolute path of a PEM CA bundle that verifies the JWKS server instead of the system store.
    public let jwksCA: String?
    /// How often `jwksURL` is fetched again (`jwt.jwks_refresh`).
    public let jwksRefresh: JWKSRefreshConfig
    /// Claims copied into upstream request headers, in file order.
    public let forwardClaims: [ForwardedClaim]
    public var identity = JWTIdentityConfig()

    public init(
        issuer: String, audiences: [String], leeway: Duration, maxLifetime: Duration, keys: [JWTKeyConfig],
        jwksURL: String?, jwksCA: String? = nil, jwksRefresh: JWKSRefreshConfig = JWKSRefreshConfig(),
        forwardClaims: [ForwardedClaim]
    ) {
        self.issuer = issuer
        self.audiences = audiences
        self.leeway = leeway
        self.maxLifetime = maxLifetime
        self.keys = keys
        self.jwksURL = jwksURL
        self.jwksCA = jwksCA
        self.jwksRefresh = jwksRefresh
        self.forwardClaims = forwardClaims
    }
}

/// `jwt.jwks_refresh`: the JWKS document's `Cache-Control: max-age` sets the next fetch, clamped
/// to `[min, max]`; `default` applies when the server sends none. Failed fetches are retried from
/// 1 s, doubling up to `min`. A token with an unknown `kid` triggers a fetch at most once per
/// `unknown_kid_interval`.
public struct JWKSRefreshConfig: Sendable, Equatable {
    public var min: Duration = .seconds(30)
    public var max: Duration = .seconds(3600)
    public var defaultInterval: Duration = .seconds(300)
    public var unknownKidInterval: Duration = .seconds(30)
    /// Connect + TLS + response, for one fetch.
    public var timeout: Duration = .seconds(10)

    public init() {}
}

public struct JWTKeyConfig: Sendable, Equatable {
    public let kid: String
    public let algorithm: JWTAlgorithm
    public let material: JWTKeyMaterial
}

public enum JWTKeyMaterial: Sendable, Equatable {
    /// HMAC shared secret (HS*).
    case secret(ConfigSecret)
    /// Absolute path of a PEM public key (RS*, PS*, ES*, EdDSA).
    case publicKeyFile(String)
}

public enum JWTAlgorithm: String, Sendable, Equatable, CaseIterable {
    case hs256 = "HS256", hs384 = "HS384", hs512 = "HS512"
    case rs256 = "RS256", rs384 = "RS384", rs512 = "RS512"
    case ps256 = "PS256", ps384 = "PS384", ps512 = "PS512"
    case es256 = "ES256", es384 = "ES384"
    case eddsa = "EdDSA"

    /// HMAC algorithms verify with a shared secret; the rest with a public key.
    public var isHMAC: Bool { self == .hs256 || self == .hs384 || self == .hs512 }
}

public struct ForwardedClaim: Sendable, Equatable {
    public let claim: String
    /// Lowercased header name.
    public let header: String
}

// MARK: - Rate limits

public struct RateLimitsConfig: Sendable, Equatable {
    public let onStoreError: StoreErrorMode
    public let headers: RateLimitHeaderStyle
    /// Clients in these networks are never limited.
    public let exemptCIDRs: [IPNetwork]
    /// Policies in file order.
    public let policies: [RateLimitPolicy]
    /// Keys the in-process store keeps at most (expired ones are swept first).
    public var maxKeys: Int = 100_000
}

public enum StoreErrorMode: String, Sendable, Equatable, CaseIterable {
    /// Fail open: let the request through when the store cannot answer.
    case allow
    /// Fail closed: 503 `rate_limiter_unavailable`.
    case deny
}

public enum RateLimitHeaderStyle: String, Sendable, Equatable, CaseIterable {
    /// `RateLimit-Limit` / `-Remaining` / `-Reset` / `-Policy` (draft-ietf-httpapi-ratelimit-headers-06).
    case draft6 = "draft-6"
    /// Structured `RateLimit` + `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10).
    case ietfDraft10 = "ietf-draft-10"
}

public struct RateLimitPolicy: Sendable, Equatable {
    public let name: String
    /// Requests allowed per window (> 0).
    public let limit: Int
    /// Whole seconds, since `RateLimit-Policy` reports `w=` in seconds.
    public let window: Duration
    /// The parts joined into the counter key, in order.
    public let key: [RateLimitKeyPart]
    public let algorithm: RateLimitAlgorithm
    /// Count and report, but never reject.
    public let shadow: Bool
    /// IPv6 clients are grouped by this prefix length for `client_ip` keys.
    public let ipv6Prefix: Int
    public var tiers: RateLimitTiersConfig? = nil
}

public enum RateLimitKeyPart: Sendable, Equatable, CustomStringConvertible {
    case clientIP
    case jwtSubject
    /// A dotted claim path (`claim:sub` is read as `jwtSubject`).
    case claim(String)
    case route
    /// Lowercased header name.
    case header(String)

    public var description: String {
        switch self {
        case .clientIP: "client_ip"
        case .jwtSubject: "jwt_subject"
        case .claim(let path): "claim:\(path)"
        case .route: "route"
        case .header(let name): "header:\(name)"
        }
    }
}

public enum RateLimitAlgorithm: String, Sendable, Equatable, CaseIterable {
    case slidingWindow = "sliding_window"
    case slidingLog = "sliding_log"
}

// MARK: - Upstreams and routes

public struct UpstreamConfig: Sendable, Equatable {
    public let name: String
    public let endpoints: [HostPort]
    public let connectTimeout: Duration
    public let responseTimeout: Duration
    public let maxConnections: Int
    public let healthCheck: HealthCheckConfig?
    public var loadBalancing: LoadBalancing = .roundRobin
    /// Pooled connections idle this long are closed (below Node.js' 5 s keep-alive timeout).
    public var idleTimeout: Duration = .seconds(4)
    public var outlierDetection: OutlierDetectionConfig = .defaults
    public var retries: RetryConfig = .defaults
}

public struct HealthCheckConfig: Sendable, Equatable {
    public let path: String
    public let interval: Duration
    public var timeout: Duration = .seconds(2)
    /// Consecutive passes that bring an endpoint back, and failures that take it out.
    public var healthyThreshold = 2
    public var unhealthyThreshold = 2
}

public enum LoadBalancing: String, Sendable, Equatable, CaseIterable {
    case roundRobin = "round_robin"
    case leastOutstanding = "least_outstanding"
}

/// Passive health: consecutive 5xx (or connect failures) eject an endpoint for a back-off.
public struct OutlierDetectionConfig: Sendable, Equatable {
    public let consecutive5xx: Int
    public let baseEjectionTime: Duration
    public static let defaults = OutlierDetectionConfig(consecutive5xx: 5, baseEjectionTime: .seconds(10))
}

/// Retries of requests that failed before any response byte, on another endpoint.
public struct RetryConfig: Sendable, Equatable {
    public let attempts: Int
    public let methods: [String]
    /// Retries allowed as a percentage of requests (a token bucket), so retries never multiply an outage.
    public let budgetPercent: Int
    public static let defaults = RetryConfig(
        attempts: 1, methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"], budgetPercent: 20
    )
}

public struct RouteConfig: Sendable, Equatable {
    public let name: String
    public let match: RouteMatch
    public let upstream: String
    /// Index of `upstream` in `GatewayConfig.upstreams`, resolved once at load.
    public let upstreamIndex: Int
    public let auth: AuthMode
    /// Claim → accepted values, in file order; a token must satisfy every entry.
    public let requireClaims: [RequiredClaim]
    /// Policy names in the order listed.
    public let rateLimits: [String]
    /// Indices into `GatewayConfig.rateLimits.policies`, parallel to `rateLimits`.
    public let rateLimitPolicyIndices: [Int]
    /// Whether the global `cors` section applies to this route.
    public let cors: Bool
    public var identity = RouteIdentityConfig()
    public var split: RouteSplitConfig? = nil
    public var realtime: RouteRealtimeConfig = .defaults
    public var cache: RouteCacheConfig? = nil
}

public struct RouteMatch: Sendable, Equatable {
    public let host: HostMatch?
    public let pathPrefix: String
    /// `nil` = any method.
    public let methods: [String]?
    public var headers: [FieldCondition] = []
    public var cookies: [FieldCondition] = []
}

public enum HostMatch: Sendable, Equatable, CustomStringConvertible {
    /// Lowercased exact host name.
    case exact(String)
    /// `*.domain`: the stored value is `domain` (lowercased); matches any name ending in `.domain`.
    case wildcard(String)

    public var description: String {
        switch self {
        case .exact(let host): host
        case .wildcard(let domain): "*.\(domain)"
        }
    }
}

public enum AuthMode: String, Sendable, Equatable, CaseIterable {
    case none
    case optional
    case required
}

public struct RequiredClaim: Sendable, Equatable {
    public let claim: String
    public let values: [String]
}
