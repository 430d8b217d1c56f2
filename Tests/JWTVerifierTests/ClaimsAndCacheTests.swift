import Foundation
import Testing
@testable import JWTVerifier

@Suite struct ClaimsTests {
    func verify(_ claims: [(String, JWTSigner.ClaimValue)], at now: Double,
                _ configuration: JWTVerifierConfiguration = JWTVerifierConfiguration(cacheSize: 0)) throws -> JWTError? {
        let token = try mint(claims)
        return thrownError { try hsVerifier(configuration).verify(token, now: date(now)) }
    }

    @Test func expiryWithLeeway() throws {
        let claims: [(String, JWTSigner.ClaimValue)] = [("exp", .integer(Int(t0)))]
        #expect(try verify(claims, at: t0 - 1) == nil)
        #expect(try verify(claims, at: t0 + 59) == nil)       // inside 60 s leeway
        #expect(try verify(claims, at: t0 + 60) == .expired)
        let strict = JWTVerifierConfiguration(leeway: .zero, cacheSize: 0)
        #expect(try verify(claims, at: t0, strict) == .expired)
        #expect(try verify(claims, at: t0 - 0.5, strict) == nil)
    }

    @Test func notBeforeAndIssuedAt() throws {
        let nbf: [(String, JWTSigner.ClaimValue)] = [("nbf", .integer(Int(t0) + 120)), ("exp", .integer(Int(t0) + 600))]
        #expect(try verify(nbf, at: t0) == .notYetValid)
        #expect(try verify(nbf, at: t0 + 61) == nil)          // nbf − leeway reached
        let iat: [(String, JWTSigner.ClaimValue)] = [("iat", .integer(Int(t0) + 120)), ("exp", .integer(Int(t0) + 600))]
        #expect(try verify(iat, at: t0) == .notYetValid)
        #expect(try verify(iat, at: t0 + 60) == nil)
    }

    @Test func issuer() throws {
        let config = JWTVerifierConfiguration(issuer: "https://idp", cacheSize: 0)
        #expect(try verify([("iss", .string("https://idp")), ("exp", .integer(Int(t0) + 60))], at: t0, config) == nil)
        #expect(try verify([("iss", .string("https://evil")), ("exp", .integer(Int(t0) + 60))], at: t0, config) == .wrongIssuer)
        #expect(try verify([("exp", .integer(Int(t0) + 60))], at: t0, config) == .wrongIssuer)
    }

    @Test func audienceStringAndArray() throws {
        let config = JWTVerifierConfiguration(audiences: ["api", "gateway"], cacheSize: 0)
        let exp: (String, JWTSigner.ClaimValue) = ("exp", .integer(Int(t0) + 60))
        #expect(try verify([("aud", .string("gateway")), exp], at: t0, config) == nil)
        #expect(try verify([("aud", .strings(["x", "api"])), exp], at: t0, config) == nil)
        #expect(try verify([("aud", .string("other")), exp], at: t0, config) == .wrongAudience)
        #expect(try verify([("aud", .strings(["x", "y"])), exp], at: t0, config) == .wrongAudience)
        #expect(try verify([("aud", .strings([])), exp], at: t0, config) == .wrongAudience)
        #expect(try verify([exp], at: t0, config) == .wrongAudience)
        // Not configured: any aud passes.
        #expect(try verify([("aud", .string("other")), exp], at: t0) == nil)
    }

    @Test func lifetime() throws {
        let week = 7 * 24 * 3600
        #expect(try verify([("iat", .integer(Int(t0))), ("exp", .integer(Int(t0) + week))], at: t0) == nil)
        #expect(try verify([("iat", .integer(Int(t0))), ("exp", .integer(Int(t0) + week + 1))], at: t0) == .lifetimeTooLong)
        // No iat: exp − now.
        #expect(try verify([("exp", .integer(Int(t0) + week + 100))], at: t0) == .lifetimeTooLong)
        #expect(try verify([("exp", .integer(Int(t0) + week + 100))], at: t0 + 200) == nil)
        let short = JWTVerifierConfiguration(maxLifetime: .seconds(60), cacheSize: 0)
        #expect(try verify([("iat", .integer(Int(t0))), ("exp", .integer(Int(t0) + 61))], at: t0, short) == .lifetimeTooLong)
        let unlimited = JWTVerifierConfiguration(maxLifetime: nil, cacheSize: 0)
        #expect(try verify([("iat", .integer(Int(t0))), ("exp", .integer(Int(t0) + 10 * week))], at: t0, unlimited) == nil)
    }

    @Test func requiredClaims() throws {
        let config = JWTVerifierConfiguration(requiredClaims: ["scope": ["read", "admin"], "tenant": ["acme"]], cacheSize: 0)
        let exp: (String, JWTSigner.ClaimValue) = ("exp", .integer(Int(t0) + 60))
        #expect(try verify([("scope", .strings(["write", "read"])), ("tenant", .string("acme")), exp], at: t0, config) == nil)
        #expect(try verify([("scope", .string("admin")), ("tenant", .string("acme")), exp], at: t0, config) == nil)
        #expect(try verify([("scope", .string("write")), ("tenant", .string("acme")), exp], at: t0, config) == .missingClaim("scope"))
        #expect(try verify([("scope", .string("read")), exp], at: t0, config) == .missingClaim("tenant"))
        #expect(try verify([("scope", .integer(1)), ("tenant", .string("acme")), exp], at: t0, config) == .missingClaim("scope"))
        // Per-route API on the claims value.
        let claims = try hsVerifier().verify(try mint([("roles", .strings(["a", "b"])), exp]), now: date(t0))
        try claims.require(["roles": ["b"]])
        #expect(thrownError { try claims.require(["roles": ["c"]]) } == .missingClaim("roles"))
        #expect(thrownError { try claims.require(["groups": ["a"]]) } == .missingClaim("groups"))
    }
}

@Suite struct CacheTests {
    @Test func hitSkipsSignatureAndRechecksTime() throws {
        let clock = TestClock(t0)
        let verifier = JWTVerifier(
            configuration: JWTVerifierConfiguration(leeway: .zero, cacheSize: 10),
            keys: KeySet(keys: [try VerificationKey.hmac(kid: "k1", algorithm: .hs256, secret: testSecret)]),
            clock: { clock.now })
        let token = try mint([("sub", .string("u1")), ("nbf", .integer(Int(t0) - 10)), ("exp", .integer(Int(t0) + 100))])
        #expect(try verifier.verify(token).subject == "u1")
        #expect(verifier.statistics == JWTVerifierStatistics(cacheHits: 0, signatureVerifications: 1, cachedTokens: 1))
        for _ in 0..<5 { #expect(try verifier.verify(token).subject == "u1") }
        #expect(verifier.statistics == JWTVerifierStatistics(cacheHits: 5, signatureVerifications: 1, cachedTokens: 1))
        // Clock goes back before nbf: the cached entry is still time-checked.
        clock.set(t0 - 20)
        #expect(thrownError { try verifier.verify(token) } == .notYetValid)
        // Past exp: refused and evicted.
        clock.set(t0 + 100)
        #expect(thrownError { try verifier.verify(token) } == .expired)
        #expect(verifier.statistics.cachedTokens == 0)
        #expect(verifier.statistics.signatureVerifications == 1)
        // Another token with a flipped signature never hits the cache entry of the good one.
        clock.set(t0)
        #expect(thrownError { try verifier.verify(flippingSignatureByte(token)) } == .badSignature)
        #expect(verifier.statistics.signatureVerifications == 2)
    }

    @Test func bounded() throws {
        let verifier = JWTVerifier(
            configuration: JWTVerifierConfiguration(cacheSize: 3),
            keys: KeySet(keys: [try VerificationKey.hmac(kid: "k1", algorithm: .hs256, secret: testSecret)]))
        let tokens = try (0..<5).map { try mint([("sub", .string("u\($0)")), ("exp", .integer(Int(t0) + 60))]) }
        for token in tokens { _ = try verifier.verify(token, now: date(t0)) }
        #expect(verifier.statistics.cachedTokens == 3)
        #expect(verifier.statistics.signatureVerifications == 5)
        // Newest three are cached, the two oldest were evicted.
        for token in tokens.suffix(3) { _ = try verifier.verify(token, now: date(t0)) }
        #expect(verifier.statistics.cacheHits == 3)
        _ = try verifier.verify(tokens[0], now: date(t0))
        #expect(verifier.statistics.signatureVerifications == 6)
        #expect(verifier.statistics.cachedTokens == 3)
    }

    @Test func replaceKeysInvalidatesCache() throws {
        let verifier = JWTVerifier(
            configuration: JWTVerifierConfiguration(cacheSize: 10),
            keys: KeySet(keys: [try VerificationKey.hmac(kid: "k1", algorithm: .hs256, secret: testSecret)]))
        let token = try mint(basicClaims)
        _ = try verifier.verify(token, now: date(t0))
        _ = try verifier.verify(token, now: date(t0))
        #expect(verifier.statistics.cacheHits == 1)
        verifier.replaceKeys(.empty)
        #expect(thrownError { try verifier.verify(token, now: date(t0)) } == .unknownKey)
    }

    @Test func disabledCache() throws {
        let verifier = try hsVerifier()
        let token = try mint(basicClaims)
        for _ in 0..<3 { _ = try verifier.verify(token, now: date(t0)) }
        #expect(verifier.statistics == JWTVerifierStatistics(cacheHits: 0, signatureVerifications: 3, cachedTokens: 0))
    }

    @Test func concurrentUse() async throws {
        let verifier = JWTVerifier(
            configuration: JWTVerifierConfiguration(cacheSize: 8),
            keys: KeySet(keys: [try VerificationKey.hmac(kid: "k1", algorithm: .hs256, secret: testSecret)]))
        let tokens = try (0..<16).map { try mint([("sub", .string("u\($0)")), ("exp", .integer(Int(t0) + 60))]) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for i in 0..<200 {
                        let index = (i * 7 + worker) % tokens.count
                        let claims = try verifier.verify(tokens[index], now: date(t0))
                        #expect(claims.subject == "u\(index)")
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(verifier.statistics.cachedTokens <= 8)
    }
}
