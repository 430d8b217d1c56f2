import Foundation
import JWTVerifier
import NIOHTTP1
import TLSClient

/// Bearer-token authentication for routes (`auth: none | optional | required`), built once at
/// config load from the `jwt` section. Pure apart from the verifiers' token caches, so the HTTP/1.1
/// and HTTP/2 paths share it.
///
/// The token is read from the first of `jwt.sources` (in order) that holds one on this route
/// (`query` and `websocket_protocol` only where the route allows them). With `jwt.providers` the
/// token's `iss` picks the provider whose keys verify it; a key is never tried across issuers.
///
/// Outcomes (SPEC "What a client gets", RFC 6750 §3.1):
/// - no bearer token: `required` → 401 with a bare `Bearer realm="api"` challenge; `optional` →
///   anonymous (but a route with `require_claims` or `require_scopes` needs a token whatever its
///   mode: an anonymous caller cannot hold the claims, and letting it through would make
///   `optional` an open door);
/// - a token that fails verification (an unknown issuer, or a provider the route does not list,
///   included: `wrong_issuer`) → 401 `invalid_token` with `error_description` = the failure
///   category, on `optional` routes too: a client that sent a broken token should learn so rather
///   than silently be served as anonymous;
/// - a valid token without the route's `require_claims` or `require_scopes` → 403 `forbidden`.
/// Messages never contain the token, and the secret never leaves `JWTVerifier`.
final class Authenticator: Sendable {
    /// One issuer: its verifier (issuer, audiences, keys) and the refresher of its remote keys.
    struct Provider: Sendable {
        let name: String
        let verifier: JWTVerifier
        let jwks: JWKSRefresher?
    }

    let providers: [Provider]
    /// `iss` → index in `providers`; nil in the single-issuer form, whose one verifier checks `iss`.
    private let providerByIssuer: [String: Int]?
    let forwardClaims: [ForwardedClaim]
    let sources: [TokenSource]
    let forwardToken: Bool
    /// Every provider's refresher (nil without remote keys); started by the server.
    let jwks: JWKSRefreshers?
    private let now: @Sendable () -> Date

    /// The first provider's verifier (the only one in the single-issuer form).
    var verifier: JWTVerifier { self.providers[0].verifier }

    init(
        providers: [Provider], byIssuer: Bool, forwardClaims: [ForwardedClaim], sources: [TokenSource] = [.header],
        forwardToken: Bool = false, now: @escaping @Sendable () -> Date = { Date() }
    ) {
        precondition(!providers.isEmpty, "config validation requires a provider")
        self.providers = providers
        self.providerByIssuer = byIssuer
            ? Dictionary(providers.enumerated().map { ($1.verifier.configuration.issuer ?? "", $0) }, uniquingKeysWith: { a, _ in a })
            : nil
        self.forwardClaims = forwardClaims
        self.sources = sources
        self.forwardToken = forwardToken
        let refreshers = providers.compactMap(\.jwks)
        self.jwks = refreshers.isEmpty ? nil : JWKSRefreshers(refreshers)
        self.now = now
    }

    /// The single-issuer form.
    convenience init(
        verifier: JWTVerifier, forwardClaims: [ForwardedClaim], jwks: JWKSRefresher? = nil,
        now: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.init(providers: [Provider(name: "default", verifier: verifier, jwks: jwks)], byIssuer: false,
                  forwardClaims: forwardClaims, now: now)
    }

    /// What a verified request carries on.
    struct Identity: Sendable {
        let claims: VerifiedClaims
        /// Where the token was read from, to be removed from the upstream request (nil with
        /// `jwt.forward_token: true`).
        let strip: TokenLocation?
        var subject: String? { self.claims.subject }
    }

    enum Outcome {
        /// Proxy without claims (no token on an `optional` route, or `auth: none`).
        case anonymous
        /// Proxy with these claim headers added (`forward_claims`).
        case authenticated(claimHeaders: [(String, String)], identity: Identity)
        case rejected(GatewayError)
    }

    func authenticate(
        _ headers: HeadFields, target: String = "/", mode: AuthMode, requiredClaims: [String: [String]],
        identity route: RouteIdentityConfig = RouteIdentityConfig()
    ) -> Outcome {
        if mode == .none { return .anonymous }
        switch self.findToken(headers, target: target, route: route) {
        case .absent:
            if mode == .required || !requiredClaims.isEmpty || !route.requireScopes.isEmpty { return .rejected(.missingToken) }
            return .anonymous
        case .malformed:
            return .rejected(.invalidToken(category: JWTError.malformed.category))
        case .token(let token, let location):
            let provider: Provider
            switch self.provider(for: token, route: route) {
            case .success(let found): provider = found
            case .failure(let error): return .rejected(.invalidToken(category: error.category))
            }
            let claims: VerifiedClaims
            do {
                claims = try provider.verifier.verify(token, now: self.now())
            } catch {
                // Perhaps a key published since the last JWKS fetch: this request is refused
                // now (never blocked on a fetch); a rate-limited refetch lets the next one pass.
                if error == .unknownKey { provider.jwks?.keyNotFound() }
                return .rejected(.invalidToken(category: error.category))
            }
            do throws(JWTError) {
                if !requiredClaims.isEmpty { try claims.require(requiredClaims) }
                try claims.requireScopes(any: route.requireScopes.any, all: route.requireScopes.all)
            } catch {
                return .rejected(.forbidden(claim: error.claim ?? "scope"))
            }
            return .authenticated(
                claimHeaders: self.claimHeaders(claims),
                identity: Identity(claims: claims, strip: self.forwardToken ? nil : location))
        }
    }

    /// The provider for `token`: the only one, or the one its (unverified) `iss` names, provided
    /// the route accepts that provider. Anything else is `wrongIssuer`: no other key is tried.
    private func provider(for token: Substring, route: RouteIdentityConfig) -> Result<Provider, JWTError> {
        guard let providerByIssuer = self.providerByIssuer else { return .success(self.providers[0]) }
        guard let issuer = UnverifiedClaims.issuer(of: token), let index = providerByIssuer[issuer] else {
            return .failure(.wrongIssuer)
        }
        let provider = self.providers[index]
        if let allowed = route.providers, !allowed.contains(provider.name) { return .failure(.wrongIssuer) }
        return .success(provider)
    }

    /// `forward_claims` as upstream headers. A claim that is absent, not a scalar or a list of
    /// scalars, or holds bytes a header value cannot carry, is left out (never sent half-escaped).
    func claimHeaders(_ claims: VerifiedClaims) -> [(String, String)] {
        var headers: [(String, String)] = []
        headers.reserveCapacity(self.forwardClaims.count)
        for forward in self.forwardClaims {
            guard let value = Self.headerValue(claims, forward.claim) else { continue }
            headers.append((forward.header, value))
        }
        return headers
    }

    /// A claim (dotted path) as one header value: arrays joined with commas.
    static func headerValue(_ claims: VerifiedClaims, _ path: String) -> String? {
        guard let text = claims.text(path) else { return nil }
        // RFC 9110 §5.5: no CR, LF, NUL or other controls (header injection), bounded length.
        guard !text.isEmpty, text.utf8.count <= 1024, RequestValidator.isFieldValue(text) else { return nil }
        return text
    }

    enum FoundToken: Equatable {
        case absent
        /// A source held something that is not an RFC 6750 `b64token`, or several `Authorization`s.
        case malformed
        case token(Substring, TokenLocation)
    }

    /// The first configured source (that the route allows) holding a token.
    func findToken(_ headers: HeadFields, target: String, route: RouteIdentityConfig) -> FoundToken {
        for source in self.sources where route.allows(source) {
            let value: Substring?
            let location: TokenLocation
            switch source {
            case .header:
                switch Self.bearerToken(in: headers) {
                case .absent: continue
                case .malformed: return .malformed
                case .token(let token): return .token(token, .authorization)
                }
            case .cookie(let name):
                value = TokenLocation.cookie(named: name, in: headers)
                location = .cookie(name)
            case .query(let name):
                value = TokenLocation.queryParameter(named: name, in: target)
                location = .query(name)
            case .websocketProtocol:
                value = TokenLocation.websocketProtocolToken(headers)
                location = .websocketProtocol
            }
            guard let value else { continue }
            return Self.isB64Token(value) ? .token(value, location) : .malformed
        }
        return .absent
    }

    enum BearerToken: Equatable {
        /// No `Authorization` field, or one with another scheme (e.g. `Basic`).
        case absent
        /// A `Bearer` field whose token is empty or not RFC 6750 `b64token`, or several fields.
        case malformed
        case token(Substring)
    }

    /// The request's `Authorization` fields, with no list made of them.
    static func bearerToken(in headers: HeadFields) -> BearerToken {
        var found: String?
        var several = false
        headers.forEachValue(of: "authorization") { value in
            several = found != nil
            found = String(decoding: value, as: UTF8.self)
            return !several
        }
        // Several Authorization fields: which one would the upstream read? Refuse to guess.
        if several { return .malformed }
        return found.map(Self.bearerToken(value:)) ?? .absent
    }

    /// RFC 6750 §2.1: `Authorization: Bearer <b64token>`; the scheme is case-insensitive
    /// (RFC 9110 §11.1).
    private static func bearerToken(value: String) -> BearerToken {
        let whole = Substring(value)
        let schemeEnd = whole.utf8.firstIndex(of: UInt8(ascii: " ")) ?? whole.utf8.endIndex
        guard whole[..<schemeEnd].withUTF8Bytes({ bytesEqualIgnoringASCIICase($0, "bearer") }) else { return .absent }
        let token: Substring = whole[schemeEnd...].trimmingSpaces
        return Self.isB64Token(token) ? .token(token) : .malformed
    }

    /// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
    static func isB64Token(_ token: Substring) -> Bool {
        token.withUTF8Bytes { bytes in
            guard let base = bytes.baseAddress else { return false }
            var end = bytes.count
            while end > 0 && base[end - 1] == UInt8(ascii: "=") { end -= 1 }
            guard end > 0 else { return false }
            // One table load per byte, ANDed together with no branch: tokens are valid nearly
            // always, so there is nothing to stop early for, and a JWT is hundreds of bytes
            // (measured on a 234-byte JWT: 67 ns, against 220 ns for a shift and mask per byte).
            return Self.b64TokenTable.withUnsafeBufferPointer { table in
                var valid: UInt8 = 1
                for index in 0..<end { valid &= table[Int(base[index])] }
                return valid == 1
            }
        }
    }

    /// The alphabet, one bit per ASCII byte, low word 0–63 and high word 64–127, spelled out so
    /// that it can be read against the RFC: low: `+ - . /` and digits; high: capitals, `_`, small
    /// letters, `~` (`b64TokenAlphabetIsExactlyTheRFCs` holds every byte to the RFC's ranges).
    private static let b64TokenLow: UInt64 = 0x03FF_E800_0000_0000
    private static let b64TokenHigh: UInt64 = 0x47FF_FFFE_87FF_FFFE

    /// 1 for each `b64token` byte value, else 0 (none of 128–255), from the two words above: read
    /// once per token, so its lazy initialization is checked once per token, not per byte.
    private static let b64TokenTable: [UInt8] = (0..<256).map { byte in
        let word = byte < 64 ? Authenticator.b64TokenLow : (byte < 128 ? Authenticator.b64TokenHigh : 0)
        return UInt8((word >> UInt64(byte & 63)) & 1)
    }
}

// MARK: - Building from the config

extension Authenticator {
    /// Loads every key of the `jwt` section (of each of its `providers`) into a `JWTVerifier`.
    /// Errors name the key's path and never quote a secret. With `jwks_url` or `discovery_url`,
    /// also prepares (but does not start: nothing is fetched here, so `gateway validate` stays
    /// offline) the refresher that adds its keys.
    static func make(_ config: JWTConfig, now: @escaping @Sendable () -> Date = { Date() }) -> Result<Authenticator, ConfigErrors> {
        var errors: [ConfigError] = []
        let several = !config.identity.providers.isEmpty
        let sources: [(JWTProviderConfig, String)] = several
            ? config.identity.providers.enumerated().map { ($1, "jwt.providers[\($0)]") }
            : [(JWTProviderConfig(
                name: "default", issuer: config.issuer, audiences: config.audiences, leeway: config.leeway,
                maxLifetime: config.maxLifetime, keys: config.keys, jwksURL: config.jwksURL, discoveryURL: nil,
                jwksCA: config.jwksCA, jwksRefresh: config.jwksRefresh), "jwt")]
        var providers: [Provider] = []
        for (provider, path) in sources {
            if let made = Self.provider(provider, at: path, now: now, errors: &errors) { providers.append(made) }
        }
        guard errors.isEmpty, !providers.isEmpty else { return .failure(ConfigErrors(errors: errors)) }
        return .success(Authenticator(
            providers: providers, byIssuer: several, forwardClaims: config.forwardClaims,
            sources: config.identity.sources, forwardToken: config.identity.forwardToken, now: now))
    }

    private static func provider(
        _ config: JWTProviderConfig, at path: String, now: @escaping @Sendable () -> Date, errors: inout [ConfigError]
    ) -> Provider? {
        var keys: [VerificationKey] = []
        let errorCount = errors.count
        for (index, key) in config.keys.enumerated() {
            switch key.material {
            case .secret(let secret):
                let bytes = Array(secret.value.utf8)
                let needed = Self.minimumSecretBytes(key.algorithm)
                guard bytes.count >= needed else {
                    errors.append(ConfigError(
                        path: "\(path).keys[\(index)].secret",
                        reason: "an \(key.algorithm.rawValue) secret must be at least \(needed) bytes (RFC 7518 §3.2), "
                            + "this one has \(bytes.count); generate one with `openssl rand -base64 48`"
                    ))
                    continue
                }
                do {
                    keys.append(try VerificationKey.hmac(
                        kid: key.kid, algorithm: .init(rawValue: key.algorithm.rawValue)!, secret: bytes))
                } catch {
                    errors.append(ConfigError(path: "\(path).keys[\(index)].secret", reason: "unusable secret (\(error.category))"))
                }
            case .publicKeyFile(let file):
                guard let pem = try? String(contentsOfFile: file, encoding: .utf8) else {
                    errors.append(ConfigError(path: "\(path).keys[\(index)].public_key", reason: "cannot read \(file)"))
                    continue
                }
                do {
                    keys.append(try VerificationKey.publicKey(
                        kid: key.kid, algorithm: .init(rawValue: key.algorithm.rawValue)!, pem: pem))
                } catch {
                    let why = error.detail.isEmpty ? error.category : error.detail
                    errors.append(ConfigError(path: "\(path).keys[\(index)].public_key", reason: "\(file): \(why)"))
                }
            }
        }
        var remote: (url: String, endpoint: JWKSEndpoint, discovery: Bool, tls: TLSClientContext)?
        if let url = config.discoveryURL ?? config.jwksURL {
            let key = config.discoveryURL == nil ? "jwks_url" : "discovery_url"
            if let endpoint = JWKSEndpoint(url: url) {
                do {
                    let tls = try TLSClientContext(alpn: ["http/1.1"], insecure: false, caFile: config.jwksCA)
                    remote = (url, endpoint, config.discoveryURL != nil, tls)
                } catch {
                    errors.append(ConfigError(path: "\(path).\(config.jwksCA == nil ? key : "jwks_ca")", reason: "\(error)"))
                }
            } else {
                errors.append(ConfigError(path: "\(path).\(key)", reason: "must be an https:// URL with a host"))
            }
        }
        guard errors.count == errorCount else { return nil }
        let configuration = JWTVerifierConfiguration(
            issuer: config.issuer, audiences: config.audiences, leeway: config.leeway, maxLifetime: config.maxLifetime
        )
        let verifier = JWTVerifier(configuration: configuration, keys: KeySet(keys: keys), clock: now)
        let jwks = remote.map { source in
            source.discovery
                ? JWKSRefresher(
                    discoveryURL: source.url, endpoint: source.endpoint, issuer: config.issuer, tls: source.tls,
                    config: config.jwksRefresh, staticKeys: keys, verifier: verifier)
                : JWKSRefresher(
                    url: source.url, endpoint: source.endpoint, tls: source.tls, config: config.jwksRefresh,
                    staticKeys: keys, verifier: verifier)
        }
        return Provider(name: config.name, verifier: verifier, jwks: jwks)
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
