import Foundation
import JWTVerifier
import NIOHTTP1
import TLSClient

/// Bearer-token authentication for routes (`auth: none | optional | required`), built once at
/// config load from the `jwt` section. Pure apart from the verifier's token cache, so the HTTP/1.1
/// and HTTP/2 paths share it.
///
/// Outcomes (SPEC "What a client gets", RFC 6750 §3.1):
/// - no bearer token: `required` → 401 with a bare `Bearer realm="api"` challenge; `optional` →
///   anonymous (but a route with `require_claims` needs a token whatever its mode: an anonymous
///   caller cannot hold the claims, and letting it through would make `optional` an open door);
/// - a token that fails verification → 401 `invalid_token` with `error_description` = the
///   failure category (`expired`, `bad_signature` …), on `optional` routes too: a client that
///   sent a broken token should learn so rather than silently be served as anonymous;
/// - a valid token without the route's `require_claims` → 403 `forbidden`.
/// Messages never contain the token, and the secret never leaves `JWTVerifier`.
final class Authenticator: Sendable {
    let verifier: JWTVerifier
    let forwardClaims: [ForwardedClaim]
    /// Keeps `jwt.jwks_url`'s keys in `verifier` (nil without a JWKS URL); started by the server.
    let jwks: JWKSRefresher?
    private let now: @Sendable () -> Date

    init(
        verifier: JWTVerifier, forwardClaims: [ForwardedClaim], jwks: JWKSRefresher? = nil,
        now: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.verifier = verifier
        self.forwardClaims = forwardClaims
        self.jwks = jwks
        self.now = now
    }

    enum Outcome {
        /// Proxy without claims (no token on an `optional` route, or `auth: none`).
        case anonymous
        /// Proxy with these claim headers added (`forward_claims`).
        case authenticated(claimHeaders: [(String, String)], subject: String?)
        case rejected(GatewayError)
    }

    func authenticate(_ headers: HTTPHeaders, mode: AuthMode, requiredClaims: [String: [String]]) -> Outcome {
        if mode == .none { return .anonymous }
        switch Self.bearerToken(headers["authorization"]) {
        case .absent:
            if mode == .required || !requiredClaims.isEmpty { return .rejected(.missingToken) }
            return .anonymous
        case .malformed:
            return .rejected(.invalidToken(category: JWTError.malformed.category))
        case .token(let token):
            let claims: VerifiedClaims
            do {
                claims = try self.verifier.verify(token, now: self.now())
            } catch {
                // Perhaps a key published since the last JWKS fetch: this request is refused
                // now (never blocked on a fetch); a rate-limited refetch lets the next one pass.
                if error == .unknownKey { self.jwks?.keyNotFound() }
                return .rejected(.invalidToken(category: error.category))
            }
            if !requiredClaims.isEmpty {
                do {
                    try claims.require(requiredClaims)
                } catch {
                    return .rejected(.forbidden(claim: error.claim ?? ""))
                }
            }
            return .authenticated(claimHeaders: self.claimHeaders(claims), subject: claims.subject)
        }
    }

    /// `forward_claims` as upstream headers. A claim that is absent, not a scalar or a list of
    /// strings, or holds bytes a header value cannot carry, is left out (never sent half-escaped).
    func claimHeaders(_ claims: VerifiedClaims) -> [(String, String)] {
        var headers: [(String, String)] = []
        headers.reserveCapacity(self.forwardClaims.count)
        for forward in self.forwardClaims {
            guard let value = Self.headerValue(claims, forward.claim) else { continue }
            headers.append((forward.header, value))
        }
        return headers
    }

    static func headerValue(_ claims: VerifiedClaims, _ name: String) -> String? {
        let text: String
        if let string = claims.string(name) {
            text = string
        } else if let list = claims.strings(name) {
            text = list.joined(separator: ",")
        } else if let number = claims.number(name) {
            text = number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
        } else if let bool = claims.bool(name) {
            text = bool ? "true" : "false"
        } else {
            return nil
        }
        // RFC 9110 §5.5: no CR, LF, NUL or other controls (header injection), bounded length.
        guard !text.isEmpty, text.utf8.count <= 1024, RequestValidator.isFieldValue(text) else { return nil }
        return text
    }

    enum BearerToken: Equatable {
        /// No `Authorization` field, or one with another scheme (e.g. `Basic`).
        case absent
        /// A `Bearer` field whose token is empty or not RFC 6750 `b64token`, or several fields.
        case malformed
        case token(Substring)
    }

    /// RFC 6750 §2.1: `Authorization: Bearer <b64token>`; the scheme is case-insensitive
    /// (RFC 9110 §11.1). Tokens are read from this header only — never from the query or body.
    static func bearerToken(_ values: [String]) -> BearerToken {
        guard let value = values.first else { return .absent }
        // Several Authorization fields: which one would the upstream read? Refuse to guess.
        guard values.count == 1 else { return .malformed }
        let whole = Substring(value)
        let schemeEnd: Substring.Index = whole.firstIndex(of: " ") ?? whole.endIndex
        guard whole[..<schemeEnd].lowercased() == "bearer" else { return .absent }
        let token: Substring = whole[schemeEnd...].trimmingSpaces
        var body = token
        while body.last == "=" { body.removeLast() }
        guard !body.isEmpty, body.utf8.allSatisfy(Self.isB64TokenByte) else { return .malformed }
        return .token(token)
    }

    private static func isB64TokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "+"), UInt8(ascii: "/"):
            true
        default: false
        }
    }
}

// MARK: - Building from the config

extension Authenticator {
    /// Loads every key of the `jwt` section into a `JWTVerifier`. Errors name the key's path and
    /// never quote a secret. With `jwks_url`, also prepares (but does not start: nothing is
    /// fetched here, so `gateway validate` stays offline) the refresher that adds its keys.
    static func make(_ config: JWTConfig, now: @escaping @Sendable () -> Date = { Date() }) -> Result<Authenticator, ConfigErrors> {
        var keys: [VerificationKey] = []
        var errors: [ConfigError] = []
        for (index, key) in config.keys.enumerated() {
            switch key.material {
            case .secret(let secret):
                let bytes = Array(secret.value.utf8)
                let needed = Self.minimumSecretBytes(key.algorithm)
                guard bytes.count >= needed else {
                    errors.append(ConfigError(
                        path: "jwt.keys[\(index)].secret",
                        reason: "an \(key.algorithm.rawValue) secret must be at least \(needed) bytes (RFC 7518 §3.2), "
                            + "this one has \(bytes.count); generate one with `openssl rand -base64 48`"
                    ))
                    continue
                }
                do {
                    keys.append(try VerificationKey.hmac(
                        kid: key.kid, algorithm: .init(rawValue: key.algorithm.rawValue)!, secret: bytes))
                } catch {
                    errors.append(ConfigError(path: "jwt.keys[\(index)].secret", reason: "unusable secret (\(error.category))"))
                }
            case .publicKeyFile(let path):
                guard let pem = try? String(contentsOfFile: path, encoding: .utf8) else {
                    errors.append(ConfigError(path: "jwt.keys[\(index)].public_key", reason: "cannot read \(path)"))
                    continue
                }
                do {
                    keys.append(try VerificationKey.publicKey(
                        kid: key.kid, algorithm: .init(rawValue: key.algorithm.rawValue)!, pem: pem))
                } catch {
                    let why = error.detail.isEmpty ? error.category : error.detail
                    errors.append(ConfigError(path: "jwt.keys[\(index)].public_key", reason: "\(path): \(why)"))
                }
            }
        }
        var jwksSource: (url: String, endpoint: JWKSEndpoint, tls: TLSClientContext)?
        if let url = config.jwksURL {
            if let endpoint = JWKSEndpoint(url: url) {
                do {
                    let tls = try TLSClientContext(alpn: ["http/1.1"], insecure: false, caFile: config.jwksCA)
                    jwksSource = (url, endpoint, tls)
                } catch {
                    errors.append(ConfigError(path: config.jwksCA == nil ? "jwt.jwks_url" : "jwt.jwks_ca", reason: "\(error)"))
                }
            } else {
                errors.append(ConfigError(path: "jwt.jwks_url", reason: "must be an https:// URL with a host"))
            }
        }
        guard errors.isEmpty else { return .failure(ConfigErrors(errors: errors)) }
        let configuration = JWTVerifierConfiguration(
            issuer: config.issuer, audiences: config.audiences, leeway: config.leeway,
            maxLifetime: config.maxLifetime
        )
        let verifier = JWTVerifier(configuration: configuration, keys: KeySet(keys: keys), clock: now)
        let jwks = jwksSource.map { source in
            JWKSRefresher(
                url: source.url, endpoint: source.endpoint, tls: source.tls, config: config.jwksRefresh,
                staticKeys: keys, verifier: verifier)
        }
        return .success(Authenticator(verifier: verifier, forwardClaims: config.forwardClaims, jwks: jwks, now: now))
    }

    /// RFC 7518 §3.2: an HMAC key at least as long as the hash output.
    static func minimumSecretBytes(_ algorithm: JWTAlgorithm) -> Int {
        switch algorithm {
        case .hs384: 48
        case .hs512: 64
        default: 32
        }
    }
}
