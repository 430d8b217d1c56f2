import Foundation
import JWTVerifier

/// What `gateway token` was asked for.
public struct TestTokenRequest: Sendable {
    /// HMAC secret; `nil` → the first HS256 key of the config's `jwt` section.
    public var secret: String?
    public var subject: String
    public var role: String?
    /// A duration like `1h` (`gateway.yaml` syntax).
    public var ttl: String
    /// `nil` → the config key's kid when the secret came from the config, else no `kid` header
    /// (the gateway then picks its single HS256 key).
    public var kid: String?
    /// `nil` → the config's `jwt.issuer`, else `barberpro-auth`.
    public var issuer: String?
    /// `nil` → the config's first `jwt.audiences` entry, else `barberpro-api`.
    public var audience: String?

    public init(secret: String?, subject: String, role: String? = nil, ttl: String = "1h", kid: String? = nil,
                issuer: String? = nil, audience: String? = nil) {
        self.secret = secret
        self.subject = subject
        self.role = role
        self.ttl = ttl
        self.kid = kid
        self.issuer = issuer
        self.audience = audience
    }
}

public struct TestTokenError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Mints HS256 test tokens for testers (`gateway token`, SPEC "Command line"). The gateway never
/// holds private keys, so only HMAC tokens can be minted.
public enum TestTokens {
    public static let defaultIssuer = "barberpro-auth"
    public static let defaultAudience = "barberpro-api"

    public static func mint(_ request: TestTokenRequest, config: JWTConfig? = nil, now: Date = Date()) throws(TestTokenError) -> String {
        guard !request.subject.isEmpty else { throw TestTokenError("--sub must not be empty") }
        guard let ttl = ConfigSyntax.duration(request.ttl), ttl >= .seconds(1) else {
            throw TestTokenError("--ttl: expected a duration like 15m, 1h or 7d, got '\(request.ttl)'")
        }
        var secret = request.secret
        var kid = request.kid
        if secret == nil {
            let configKey = config?.keys.first { $0.algorithm == .hs256 }
            guard let configKey, case .secret(let configured) = configKey.material else {
                throw TestTokenError("--secret is required (or --config with an HS256 key under jwt.keys)")
            }
            secret = configured.value
            kid = kid ?? configKey.kid
        }
        let bytes = Array((secret ?? "").utf8)
        let needed = Authenticator.minimumSecretBytes(.hs256)
        guard bytes.count >= needed else {
            // Never echo the secret itself.
            throw TestTokenError("the secret must be at least \(needed) bytes for HS256 (RFC 7518 §3.2), this one has \(bytes.count)")
        }
        let signer: JWTSigner
        do {
            signer = try JWTSigner(algorithm: .hs256, secret: bytes, kid: kid)
        } catch {
            throw TestTokenError("unusable secret (\(error.category))")
        }
        let issuedAt = Int(now.timeIntervalSince1970)
        var claims: [(String, JWTSigner.ClaimValue)] = [
            ("iss", .string(request.issuer ?? config?.issuer ?? defaultIssuer)),
            ("aud", .string(request.audience ?? config?.audiences.first ?? defaultAudience)),
            ("sub", .string(request.subject)),
        ]
        if let role = request.role { claims.append(("role", .string(role))) }
        claims.append(("iat", .integer(issuedAt)))
        claims.append(("exp", .integer(issuedAt + Int(ttl.components.seconds))))
        return signer.sign(claims)
    }
}
