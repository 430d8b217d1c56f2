import Foundation
import Testing
@testable import JWTVerifier

/// Tokens minted at test time by an independent implementation (PyJWT + cryptography).
@Suite(.needsPyJWT)
struct PyJWTInteropTests {
    static let algorithms = JWTAlgorithm.allCases.map(\.rawValue)

    var fixtures: PyFixtures { PyFixtures.shared! }

    /// All 12 keys loaded from PEM/secret, each with its kid.
    func pemVerifier() throws -> JWTVerifier {
        let keys = try Self.algorithms.map { try fixtures.key($0, kid: "kid-" + $0) }
        return JWTVerifier(configuration: pyConfiguration(), keys: KeySet(keys: keys))
    }

    @Test(arguments: algorithms)
    func validTokenVerifies(alg: String) throws {
        let verifier = try pemVerifier()
        let fixture = fixtures.byAlg[alg]!
        let claims = try verifier.verify(fixture.token, now: PyFixtures.now)
        #expect(claims.subject == "user-42")
        #expect(claims.strings("roles") == ["admin", "ops"])
        #expect(claims.string("scope") == "read write")
        #expect(claims.audiences == ["gateway", "other"])
        #expect(claims.expiresAt == date(PyFixtures.expiresAt))
        #expect(claims.issuedAt == date(PyFixtures.issuedAt))
        // Without kid: the single key pinned to this alg is chosen.
        #expect(try verifier.verify(fixture.tokenWithoutKid, now: PyFixtures.now).subject == "user-42")
    }

    @Test(arguments: algorithms)
    func tamperedPayloadFails(alg: String) throws {
        let verifier = try pemVerifier()
        let token = fixtures.byAlg[alg]!.token
        let forged = replacingPayload(token, with: #"{"sub":"admin","iss":"https://issuer.example","aud":"gateway","iat":1700000000,"exp":1700000600}"#)
        #expect(thrownError { try verifier.verify(forged, now: PyFixtures.now) } == .badSignature)
    }

    @Test(arguments: algorithms)
    func flippedSignatureFails(alg: String) throws {
        let verifier = try pemVerifier()
        let token = flippingSignatureByte(fixtures.byAlg[alg]!.token)
        #expect(thrownError { try verifier.verify(token, now: PyFixtures.now) } == .badSignature)
    }

    @Test(arguments: algorithms)
    func swappedAlgFails(alg: String) throws {
        let verifier = try pemVerifier()
        let all = Self.algorithms
        let other = all[(all.firstIndex(of: alg)! + 1) % all.count]
        let fixture = fixtures.byAlg[alg]!
        // With kid: the kid's key is pinned to another alg.
        let swapped = swappingAlg(fixture.token, from: alg, to: other)
        #expect(swapped != fixture.token)
        #expect(thrownError { try verifier.verify(swapped, now: PyFixtures.now) } == .unsupportedAlgorithm)
        // Without kid, only this alg's key loaded: nothing is pinned to the new alg.
        let single = JWTVerifier(configuration: pyConfiguration(), keys: KeySet(keys: [try fixtures.key(alg)]))
        let swappedNoKid = swappingAlg(fixture.tokenWithoutKid, from: alg, to: other)
        #expect(thrownError { try single.verify(swappedNoKid, now: PyFixtures.now) } == .unknownKey)
        // Without kid, all keys loaded: the other alg's key is used and the signature fails.
        #expect(thrownError { try verifier.verify(swappedNoKid, now: PyFixtures.now) } == .badSignature)
    }

    @Test(arguments: algorithms)
    func expiredTokenFails(alg: String) throws {
        let verifier = try pemVerifier()
        // exp = iat + 5; now = iat + 10 is inside the default 60 s leeway, iat + 70 is not.
        let token = fixtures.byAlg[alg]!.expiredToken
        _ = try verifier.verify(token, now: PyFixtures.now)
        #expect(thrownError { try verifier.verify(token, now: date(PyFixtures.issuedAt + 70)) } == .expired)
    }

    @Test(arguments: algorithms)
    func jwksKeysVerify(alg: String) throws {
        let keys = try KeySet.jwks(json: Array(fixtures.jwks.utf8))
        #expect(keys.keys.count == 12)
        #expect(keys.skipped.isEmpty)
        let verifier = JWTVerifier(configuration: pyConfiguration(), keys: keys)
        #expect(try verifier.verify(fixtures.byAlg[alg]!.token, now: PyFixtures.now).subject == "user-42")
        #expect(thrownError { try verifier.verify(flippingSignatureByte(fixtures.byAlg[alg]!.token), now: PyFixtures.now) } == .badSignature)
    }

    @Test(arguments: algorithms)
    func jwkWithoutAlgInference(alg: String) throws {
        let fixture = fixtures.byAlg[alg]!
        let document = "{\"keys\":[\(fixture.jwkWithoutAlg)]}"
        let keys = try KeySet.jwks(json: Array(document.utf8))
        let algorithm = JWTAlgorithm(rawValue: alg)!
        switch algorithm.family {
        case .ecdsa, .eddsa:
            // The curve fixes the algorithm.
            #expect(keys.keys.map(\.algorithm) == [algorithm])
            _ = try JWTVerifier(configuration: pyConfiguration(), keys: keys).verify(fixture.token, now: PyFixtures.now)
        case .hmac, .rsaPKCS1, .rsaPSS:
            // Ambiguous without configuration: skipped, unless a default is given.
            #expect(keys.keys.isEmpty)
            #expect(keys.skipped.count == 1)
            let pinned = try KeySet.jwks(json: Array(document.utf8),
                                         rsaAlgorithm: algorithm.family == .hmac ? nil : algorithm,
                                         hmacAlgorithm: algorithm.family == .hmac ? algorithm : nil)
            _ = try JWTVerifier(configuration: pyConfiguration(), keys: pinned).verify(fixture.token, now: PyFixtures.now)
        }
    }

    @Test func rsaPublicKeyAndCertificatePEMFormats() throws {
        let token = fixtures.byAlg["RS256"]!.tokenWithoutKid
        for pem in [fixtures.rsaPKCS1PEM, fixtures.rsaCertificatePEM] {
            let key = try VerificationKey.publicKey(algorithm: .rs256, pem: pem)
            let verifier = JWTVerifier(configuration: pyConfiguration(), keys: KeySet(keys: [key]))
            #expect(try verifier.verify(token, now: PyFixtures.now).subject == "user-42")
        }
    }

    @Test func keyTypeMustFitPinnedAlgorithm() throws {
        // EC P-256 key pinned to ES384, RSA key pinned to ES256/EdDSA/HS256, Ed25519 pinned to RS256.
        #expect(thrownError { try VerificationKey.publicKey(algorithm: .es384, pem: fixtures.byAlg["ES256"]!.publicPEM!) } == .invalidKey)
        #expect(thrownError { try VerificationKey.publicKey(algorithm: .es256, pem: fixtures.byAlg["RS256"]!.publicPEM!) } == .invalidKey)
        #expect(thrownError { try VerificationKey.publicKey(algorithm: .edDSA, pem: fixtures.byAlg["RS256"]!.publicPEM!) } == .invalidKey)
        #expect(thrownError { try VerificationKey.publicKey(algorithm: .hs256, pem: fixtures.byAlg["RS256"]!.publicPEM!) } == .invalidKey)
        #expect(thrownError { try VerificationKey.publicKey(algorithm: .rs256, pem: fixtures.byAlg["EdDSA"]!.publicPEM!) } == .invalidKey)
        #expect(thrownError { try VerificationKey.publicKey(algorithm: .rs256, pem: "not a pem") } == .invalidKey)
    }

    /// Alg confusion: an HS256 token whose HMAC secret is the RSA public key's PEM text.
    @Test func hs256SignedWithRSAPublicKeyIsRefused() throws {
        let pem = fixtures.byAlg["RS256"]!.publicPEM!
        let key = try VerificationKey.publicKey(kid: "rsa", algorithm: .rs256, pem: pem)
        let verifier = JWTVerifier(configuration: pyConfiguration(), keys: KeySet(keys: [key]))
        let claims: [(String, JWTSigner.ClaimValue)] = [
            ("sub", .string("attacker")), ("iss", .string("https://issuer.example")), ("aud", .string("gateway")),
            ("iat", .integer(1_700_000_000)), ("exp", .integer(1_700_000_600)),
        ]
        let withKid = try JWTSigner(algorithm: .hs256, secret: Array(pem.utf8), kid: "rsa").sign(claims)
        #expect(thrownError { try verifier.verify(withKid, now: PyFixtures.now) } == .unsupportedAlgorithm)
        let withoutKid = try JWTSigner(algorithm: .hs256, secret: Array(pem.utf8)).sign(claims)
        #expect(thrownError { try verifier.verify(withoutKid, now: PyFixtures.now) } == .unknownKey)
    }

    /// jku / x5u / jwk in the header point at the attacker's key; they must not be used.
    @Test func headerKeyReferencesAreIgnored() throws {
        let verifier = try pemVerifier()
        let token = fixtures.tokenWithHostileHeader
        let header = String(decoding: B64.decode(segments(token)[0]), as: UTF8.self)
        #expect(header.contains("jku") && header.contains("x5u") && header.contains("\"jwk\""))
        // Verified with our RS256 key (selected by alg), so the attacker's signature fails.
        #expect(thrownError { try verifier.verify(token, now: PyFixtures.now) } == .badSignature)
    }

    @Test func claimPolicyOnIndependentToken() throws {
        let token = fixtures.byAlg["ES256"]!.token
        let keys = KeySet(keys: [try fixtures.key("ES256", kid: "kid-ES256")])
        func verify(_ configuration: JWTVerifierConfiguration) -> JWTError? {
            thrownError { try JWTVerifier(configuration: configuration, keys: keys).verify(token, now: PyFixtures.now) }
        }
        #expect(verify(JWTVerifierConfiguration(issuer: "https://other.example")) == .wrongIssuer)
        #expect(verify(JWTVerifierConfiguration(audiences: ["nope"])) == .wrongAudience)
        #expect(verify(JWTVerifierConfiguration(audiences: ["nope", "other"])) == nil)
        #expect(verify(JWTVerifierConfiguration(requiredClaims: ["roles": ["ops"]])) == nil)
        #expect(verify(JWTVerifierConfiguration(requiredClaims: ["roles": ["root"]])) == .missingClaim("roles"))
        #expect(verify(JWTVerifierConfiguration(maxLifetime: .seconds(300))) == .lifetimeTooLong)
    }
}
