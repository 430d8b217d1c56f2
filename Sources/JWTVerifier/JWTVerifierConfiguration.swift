/// Verification policy, immutable once a `JWTVerifier` holds it.
public struct JWTVerifierConfiguration: Sendable {
    /// Required `iss` value (RFC 7519 §4.1.1); `nil` skips the check.
    public var issuer: String?
    /// Accepted `aud` values (RFC 7519 §4.1.3): the token's `aud` (string or array) must contain at
    /// least one. Empty skips the check.
    public var audiences: [String]
    /// Clock skew tolerated for `exp`, `nbf` and `iat` (RFC 7519 §4.1.4 "small leeway").
    public var leeway: Duration
    /// Longest accepted `exp - iat` (or `exp - now` without `iat`); `nil` disables the check.
    public var maxLifetime: Duration?
    /// Tokens longer than this many bytes are `malformed` before any decoding.
    public var maxTokenBytes: Int
    /// Verified-token cache entries; 0 disables the cache.
    public var cacheSize: Int
    /// Claim name → allowed values; the claim (a string or an array of strings) must contain one of
    /// them, else `missingClaim(name)`. Checked for every token; per-route checks can use
    /// `VerifiedClaims.require(_:)` instead.
    public var requiredClaims: [String: [String]]

    public init(
        issuer: String? = nil,
        audiences: [String] = [],
        requiredClaims: [String: [String]] = [:],
        leeway: Duration = .seconds(60),
        maxLifetime: Duration? = .seconds(7 * 24 * 3600),
        maxTokenBytes: Int = 8 * 1024,
        cacheSize: Int = 10_000
    ) {
        self.issuer = issuer
        self.audiences = audiences
        self.leeway = leeway
        self.maxLifetime = maxLifetime
        self.maxTokenBytes = maxTokenBytes
        self.cacheSize = cacheSize
        self.requiredClaims = requiredClaims
    }
}

extension Duration {
    var seconds: Double {
        let parts = components
        return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
    }
}
