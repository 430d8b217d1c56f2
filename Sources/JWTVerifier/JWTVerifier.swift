import Foundation
import Synchronization

/// Counters for tests and metrics.
public struct JWTVerifierStatistics: Sendable, Equatable {
    /// Tokens answered from the verified-token cache.
    public var cacheHits: Int
    /// Signature verifications performed (the expensive part).
    public var signatureVerifications: Int
    /// Entries currently cached.
    public var cachedTokens: Int
}

/// Verifies JWS compact tokens (RFC 7515) carrying JWT claims (RFC 7519) against a swappable
/// `KeySet`, with a bounded cache of verified tokens.
///
/// Order of checks on a cache miss: size → segments/base64url/header JSON → `alg` and `crit` →
/// key selection → signature → claims JSON → `exp`/`nbf`/`iat` → `iss` → `aud` → lifetime →
/// required claims. Claims are only read after the signature verified. On a cache hit only the
/// time-based claims are re-checked against `now` (everything else is fixed for a given token and
/// configuration).
public final class JWTVerifier: Sendable {
    public let configuration: JWTVerifierConfiguration
    private let keys: Mutex<KeySet>
    private let cache: VerifiedTokenCache
    private let clock: @Sendable () -> Date
    private let leeway: Double
    private let hits = Atomic<Int>(0)
    private let signatureChecks = Atomic<Int>(0)

    /// - Parameter clock: the time source for `verify(_:)`; tests inject a fixed one.
    public init(
        configuration: JWTVerifierConfiguration = JWTVerifierConfiguration(),
        keys: KeySet,
        clock: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.configuration = configuration
        self.keys = Mutex(keys)
        self.cache = VerifiedTokenCache(capacity: configuration.cacheSize)
        self.clock = clock
        self.leeway = configuration.leeway.seconds
    }

    /// The key set in use.
    public var currentKeys: KeySet { keys.withLock { $0 } }

    /// Atomically swaps the key set (e.g. after a JWKS refresh) and empties the verified-token cache,
    /// so tokens signed by a withdrawn key stop passing at once.
    public func replaceKeys(_ newKeys: KeySet) {
        keys.withLock { $0 = newKeys }
        cache.invalidateAll()
    }

    public var statistics: JWTVerifierStatistics {
        JWTVerifierStatistics(
            cacheHits: hits.load(ordering: .relaxed),
            signatureVerifications: signatureChecks.load(ordering: .relaxed),
            cachedTokens: cache.count)
    }

    /// Verifies `token` at the injected clock's current time.
    public func verify(_ token: String) throws(JWTError) -> VerifiedClaims {
        try verify(token, now: clock())
    }

    /// Verifies `token` (signature and claims) as of `now`.
    public func verify(_ token: String, now: Date) throws(JWTError) -> VerifiedClaims {
        var token = token
        return try token.withUTF8 { bytes in
            Result { () throws(JWTError) in try self.verify(bytes: bytes, now: now.timeIntervalSince1970) }
        }.get()
    }

    /// Verifies `token` (e.g. a slice of the `Authorization` header) as of `now`.
    public func verify(_ token: Substring, now: Date) throws(JWTError) -> VerifiedClaims {
        var token = token
        return try token.withUTF8 { bytes in
            Result { () throws(JWTError) in try self.verify(bytes: bytes, now: now.timeIntervalSince1970) }
        }.get()
    }

    /// Verifies only the JWS signature (key selection, `alg` pinning, `crit`) and returns the raw
    /// payload; no claim checks and no cache. For JWS objects that are not JWTs.
    public func verifySignature(_ token: String) throws(JWTError) -> VerifiedJWS {
        var token = token
        return try token.withUTF8 { bytes in
            Result { () throws(JWTError) -> VerifiedJWS in
                guard bytes.count <= self.configuration.maxTokenBytes else { throw JWTError.malformed.with("token too large") }
                let jws = try verifyJWS(bytes)
                return VerifiedJWS(algorithm: jws.algorithm, keyID: jws.kid, payload: jws.payload)
            }
        }.get()
    }

    // MARK: - Internals

    private func verifyJWS(_ bytes: UnsafeBufferPointer<UInt8>) throws(JWTError) -> ParsedJWS {
        let jws = try ParsedJWS.parse(bytes)
        let keySet = keys.withLock { $0 }
        let key = try keySet.select(algorithm: jws.algorithm, kid: jws.kid)
        signatureChecks.wrappingAdd(1, ordering: .relaxed)
        guard key.verify(signingInput: UnsafeBufferPointer(rebasing: bytes[0..<jws.signingInputLength]),
                         signature: jws.signature) else {
            throw JWTError.badSignature.with("signature does not verify")
        }
        return jws
    }

    private func verify(bytes: UnsafeBufferPointer<UInt8>, now: Double) throws(JWTError) -> VerifiedClaims {
        guard bytes.count <= configuration.maxTokenBytes else { throw JWTError.malformed.with("token too large") }
        guard cache.capacity > 0 else {
            return try verifyUncached(bytes: bytes, now: now)
        }
        let digest = SHA256Digest.hash(bytes)
        if let cached = cache.lookup(digest) {
            hits.wrappingAdd(1, ordering: .relaxed)
            do {
                try checkTimes(cached, now: now)
            } catch {
                if error == .expired { cache.remove(digest) }
                throw error
            }
            return cached
        }
        let generation = cache.generation  // read before the key set: see VerifiedTokenCache.insert
        let claims = try verifyUncached(bytes: bytes, now: now)
        cache.insert(digest, claims: claims, generation: generation)
        return claims
    }

    private func verifyUncached(bytes: UnsafeBufferPointer<UInt8>, now: Double) throws(JWTError) -> VerifiedClaims {
        let jws = try verifyJWS(bytes)
        guard let object = JSONValue.parse(jws.payload)?.objectValue else {
            throw JWTError.malformed.with("claims are not a JSON object")
        }
        let claims = try Self.decodeRegisteredClaims(object)
        try checkTimes(claims, now: now)
        try checkPolicy(claims, now: now)
        return claims
    }

    /// Reads `exp` (required), `nbf`, `iat` (numbers, RFC 7519 §2 NumericDate) and `sub` (string).
    static func decodeRegisteredClaims(_ object: [String: JSONValue]) throws(JWTError) -> VerifiedClaims {
        guard let expMember = object["exp"] else { throw JWTError.missingClaim("exp") }
        guard let exp = expMember.numberValue else { throw JWTError.malformed.with("exp is not a number") }
        func optionalNumber(_ name: String) throws(JWTError) -> Double? {
            guard let member = object[name] else { return nil }
            guard let value = member.numberValue else { throw JWTError.malformed.with("\(name) is not a number") }
            return value
        }
        let nbf = try optionalNumber("nbf")
        let iat = try optionalNumber("iat")
        var subject: String?
        if let member = object["sub"] {
            guard let string = member.stringValue else { throw JWTError.malformed.with("sub is not a string") }
            subject = string
        }
        return VerifiedClaims(claims: object, expiration: exp, notBeforeSeconds: nbf, issuedAtSeconds: iat, subject: subject)
    }

    /// RFC 7519 §4.1.4/§4.1.5: valid while `nbf - leeway ≤ now < exp + leeway`; `iat` may not be
    /// later than `now + leeway`.
    private func checkTimes(_ claims: VerifiedClaims, now: Double) throws(JWTError) {
        if now >= claims.expiration + leeway { throw JWTError.expired.with("exp has passed") }
        if let nbf = claims.notBeforeSeconds, now + leeway < nbf { throw JWTError.notYetValid.with("nbf is in the future") }
        if let iat = claims.issuedAtSeconds, iat > now + leeway { throw JWTError.notYetValid.with("iat is in the future") }
    }

    private func checkPolicy(_ claims: VerifiedClaims, now: Double) throws(JWTError) {
        if let issuer = configuration.issuer, claims.claims["iss"]?.stringValue != issuer {
            throw JWTError.wrongIssuer.with("iss differs from the configured issuer")
        }
        if !configuration.audiences.isEmpty {
            guard let audiences = claims.claims["aud"]?.stringsValue,
                  audiences.contains(where: configuration.audiences.contains) else {
                throw JWTError.wrongAudience.with("aud shares no value with the configured audiences")
            }
        }
        if let maxLifetime = configuration.maxLifetime {
            let start = claims.issuedAtSeconds ?? now
            if claims.expiration - start > maxLifetime.seconds {
                throw JWTError.lifetimeTooLong.with("exp is too far after iat (or now)")
            }
        }
        if !configuration.requiredClaims.isEmpty {
            try claims.require(configuration.requiredClaims)
        }
    }
}
