import Foundation
import Testing
@testable import JWTVerifier

let testSecret = Array("0123456789abcdef0123456789abcdef".utf8)  // 32 bytes: the HS256 minimum
let t0: Double = 1_700_000_000

func hsVerifier(_ configuration: JWTVerifierConfiguration = JWTVerifierConfiguration(cacheSize: 0)) throws -> JWTVerifier {
    JWTVerifier(configuration: configuration,
                keys: KeySet(keys: [try VerificationKey.hmac(kid: "k1", algorithm: .hs256, secret: testSecret)]))
}

func mint(_ claims: [(String, JWTSigner.ClaimValue)], kid: String? = "k1") throws -> String {
    try JWTSigner(algorithm: .hs256, secret: testSecret, kid: kid).sign(claims)
}

/// HS256-signs an arbitrary header and payload text (for hand-made malformed tokens).
func signRaw(header: String, payload: String) -> String {
    let input = B64.encode(header) + "." + B64.encode(payload)
    let mac = Array(input.utf8).withUnsafeBufferPointer { HMACSHA2.mac(algorithm: .hs256, key: testSecret, input: $0)! }
    return input + "." + B64.encode(mac)
}

let basicClaims: [(String, JWTSigner.ClaimValue)] = [("sub", .string("u1")), ("iat", .integer(Int(t0))), ("exp", .integer(Int(t0) + 300))]

@Suite struct ParsingAndSecurityTests {
    @Test func signerRoundTrip() throws {
        let token = try mint(basicClaims)
        let claims = try hsVerifier().verify(token, now: date(t0 + 1))
        #expect(claims.subject == "u1")
        // Substring entry point (e.g. after "Bearer ").
        let header = "Bearer " + token
        #expect(try hsVerifier().verify(header.dropFirst(7), now: date(t0 + 1)).subject == "u1")
    }

    @Test(arguments: ["none", "None", "NONE", "nOnE"])
    func algNoneRefused(alg: String) throws {
        let payload = B64.encode(#"{"sub":"u1","exp":1700000300}"#)
        let header = B64.encode("{\"alg\":\"\(alg)\",\"kid\":\"k1\"}")
        let verifier = try hsVerifier()
        #expect(thrownError { try verifier.verify("\(header).\(payload).", now: date(t0)) } == .malformed)  // empty signature
        #expect(thrownError { try verifier.verify("\(header).\(payload).AAAA", now: date(t0)) } == .unsupportedAlgorithm)
        #expect(thrownError { try verifier.verifySignature("\(header).\(payload).AAAA") } == .unsupportedAlgorithm)
    }

    @Test func unknownOrLowercaseAlgRefused() throws {
        for alg in ["hs256", "HS257", "RSA-OAEP", ""] {
            let token = signRaw(header: "{\"alg\":\"\(alg)\"}", payload: #"{"exp":1700000300}"#)
            #expect(thrownError { try hsVerifier().verify(token, now: date(t0)) } == .unsupportedAlgorithm)
        }
        let numericAlg = signRaw(header: #"{"alg":256}"#, payload: #"{"exp":1700000300}"#)
        #expect(thrownError { try hsVerifier().verify(numericAlg, now: date(t0)) } == .malformed)
    }

    @Test func critRefused() throws {
        let payload = #"{"exp":1700000300}"#
        for crit in [#"["exp"]"#, #"["b64"]"#, "[]", #""x""#] {
            let token = signRaw(header: "{\"alg\":\"HS256\",\"crit\":\(crit),\"exp\":1}", payload: payload)
            #expect(thrownError { try hsVerifier().verify(token, now: date(t0)) } == .malformed)
        }
        // Control: same header shape without crit verifies.
        _ = try hsVerifier().verify(signRaw(header: #"{"alg":"HS256","exp":1}"#, payload: payload), now: date(t0))
    }

    @Test func headerKeyHintsNeverSelectKeys() throws {
        // An attacker-supplied jwk (oct, with the attacker's secret) and jku/x5u/x5c: the token is still
        // checked against our key only, so the attacker's HMAC fails.
        let attackerSecret = Array("attacker-attacker-attacker-attacker!".utf8)
        let header = #"{"alg":"HS256","jku":"https://evil.example/k","x5u":"https://evil.example/c","x5c":["MIIB"],"jwk":{"kty":"oct","k":"YXR0YWNrZXItYXR0YWNrZXItYXR0YWNrZXItYXR0YWNrZXIh"}}"#
        let input = B64.encode(header) + "." + B64.encode(#"{"exp":1700000300}"#)
        let mac = Array(input.utf8).withUnsafeBufferPointer { HMACSHA2.mac(algorithm: .hs256, key: attackerSecret, input: $0)! }
        #expect(thrownError { try hsVerifier().verify(input + "." + B64.encode(mac), now: date(t0)) } == .badSignature)
        // Same hints with our key's signature: they are ignored, not an error.
        _ = try hsVerifier().verify(signRaw(header: header, payload: #"{"exp":1700000300}"#), now: date(t0))
    }

    @Test func strictBase64URL() throws {
        let token = try mint(basicClaims)
        let s = segments(token)
        let verifier = try hsVerifier()
        let cases = [
            [s[0] + "=", s[1], s[2]],                  // padding
            [s[0], s[1], s[2] + "=="],
            [s[0], s[1] + "+", s[2]],                  // standard-alphabet char
            [s[0], s[1], s[2].replacingOccurrences(of: "_", with: "/").replacingOccurrences(of: "-", with: "+") + "/"],
            [s[0], s[1] + " ", s[2]],                  // whitespace
            [s[0], s[1], s[2] + "AA"],                 // impossible length (43 + 2 = 4n+1)
            [s[0], s[1], String(s[2].dropLast()) + "\u{e9}"],  // non-ASCII
        ]
        for parts in cases {
            #expect(thrownError { try verifier.verify(parts.joined(separator: "."), now: date(t0)) } == .malformed)
        }
        #expect(thrownError { try verifier.verify(s[0] + "." + s[1], now: date(t0)) } == .malformed)
        #expect(thrownError { try verifier.verify(token + ".x.y", now: date(t0)) } == .malformed)
        #expect(thrownError { try verifier.verify("", now: date(t0)) } == .malformed)
        #expect(Base64URL.decode("QQ") == [0x41])
        #expect(Base64URL.decode("QR") == nil)  // non-zero trailing bits: non-canonical
        #expect(Base64URL.decode("QUI") == [0x41, 0x42])
        #expect(Base64URL.decode("QUJ") == nil)
        #expect(Base64URL.decode("QQ==") == nil)
        #expect(Base64URL.encode([0xFB, 0xFF]) == "-_8")
    }

    @Test func tokenSizeLimit() throws {
        let big = try mint(basicClaims + [("pad", .string(String(repeating: "x", count: 9000)))])
        #expect(thrownError { try hsVerifier().verify(big, now: date(t0)) } == .malformed)
        let roomy = try hsVerifier(JWTVerifierConfiguration(maxTokenBytes: 16 * 1024, cacheSize: 0))
        _ = try roomy.verify(big, now: date(t0))
    }

    @Test func claimTypesAreStrict() throws {
        let verifier = try hsVerifier()
        func check(_ payload: String) -> JWTError? {
            thrownError { try verifier.verify(signRaw(header: #"{"alg":"HS256"}"#, payload: payload), now: date(t0)) }
        }
        #expect(check(#"{"exp":"1700000300"}"#) == .malformed)
        #expect(check(#"{"exp":1700000300,"nbf":"0"}"#) == .malformed)
        #expect(check(#"{"exp":1700000300,"iat":true}"#) == .malformed)
        #expect(check(#"{"exp":1700000300,"sub":5}"#) == .malformed)
        #expect(check(#"{"sub":"u1"}"#) == .missingClaim("exp"))
        #expect(check(#"{"exp":1700000300,"exp":1800000000}"#) == .malformed)  // duplicate member
        #expect(check(#"[1700000300]"#) == .malformed)
        #expect(check(#"{"exp":1700000300"#) == .malformed)
        #expect(check(#"{"exp":1700000300.5}"#) == nil)
        #expect(check(#"{"exp":17000003e2, "x":"\u00e9\ud83d\ude00"}"#) == nil)
        #expect(check(#"{"exp":1700000300,"x":"\ud83d"}"#) == .malformed)  // lone surrogate
    }

    @Test func errorCategoriesAreStableAndTokenFree() throws {
        let token = try mint(basicClaims)
        let error = thrownError { try hsVerifier().verify(token, now: date(t0 + 10_000)) }
        #expect(error == .expired)
        #expect(error?.category == "expired")
        #expect(!(error.map { "\($0)" } ?? "").contains(segments(token)[1]))
        #expect(JWTError.missingClaim("roles").category == "missing_claim")
        #expect(JWTError.missingClaim("roles").claim == "roles")
        #expect(JWTError.unknownKey.category == "unknown_key")
        #expect(JWTError.badSignature.category == "bad_signature")
        #expect(JWTError.unsupportedAlgorithm.category == "unsupported_algorithm")
        #expect(JWTError.notYetValid.category == "not_yet_valid")
        #expect(JWTError.wrongIssuer.category == "wrong_issuer")
        #expect(JWTError.wrongAudience.category == "wrong_audience")
        #expect(JWTError.lifetimeTooLong.category == "lifetime_too_long")
        #expect(JWTError.malformed.category == "malformed")
    }

    @Test func keySelection() throws {
        let a = try VerificationKey.hmac(kid: "a", algorithm: .hs256, secret: testSecret)
        let b = try VerificationKey.hmac(kid: "b", algorithm: .hs256, secret: testSecret.reversed())
        let verifier = JWTVerifier(configuration: JWTVerifierConfiguration(cacheSize: 0), keys: KeySet(keys: [a, b]))
        let tokenB = try JWTSigner(algorithm: .hs256, secret: testSecret.reversed(), kid: "b").sign(basicClaims)
        _ = try verifier.verify(tokenB, now: date(t0))
        let unknownKid = try JWTSigner(algorithm: .hs256, secret: testSecret, kid: "zzz").sign(basicClaims)
        #expect(thrownError { try verifier.verify(unknownKid, now: date(t0)) } == .unknownKey)
        // No kid and two HS256 keys: ambiguous.
        let noKid = try JWTSigner(algorithm: .hs256, secret: testSecret).sign(basicClaims)
        #expect(thrownError { try verifier.verify(noKid, now: date(t0)) } == .unknownKey)
        // Key swap: b withdrawn.
        verifier.replaceKeys(KeySet(keys: [a]))
        #expect(thrownError { try verifier.verify(tokenB, now: date(t0)) } == .unknownKey)
        _ = try verifier.verify(noKid, now: date(t0))
    }

    @Test func hmacSecretsMustBeLongEnough() throws {
        #expect(thrownError { try VerificationKey.hmac(algorithm: .hs256, secret: Array(repeating: 1, count: 31)) } == .invalidKey)
        #expect(thrownError { try VerificationKey.hmac(algorithm: .hs512, secret: Array(repeating: 1, count: 63)) } == .invalidKey)
        #expect(thrownError { try VerificationKey.hmac(algorithm: .rs256, secret: Array(repeating: 1, count: 64)) } == .invalidKey)
        #expect(thrownError { try JWTSigner(algorithm: .es256, secret: Array(repeating: 1, count: 64)) } == .invalidKey)
        _ = try VerificationKey.hmac(algorithm: .hs512, secret: Array(repeating: 1, count: 64))
    }

    @Test func jwksDocumentRules() throws {
        #expect(thrownError { try KeySet.jwks(json: Array("[]".utf8)) } == .malformed)
        #expect(thrownError { try KeySet.jwks(json: Array("{\"keys\":{}}".utf8)) } == .malformed)
        let k = B64.encode(testSecret)
        let doc = """
        {"keys":[
          {"kty":"oct","kid":"sig","alg":"HS256","k":"\(k)","use":"sig"},
          {"kty":"oct","kid":"enc","alg":"HS256","k":"\(k)","use":"enc"},
          {"kty":"oct","kid":"ops","alg":"HS256","k":"\(k)","key_ops":["sign"]},
          {"kty":"oct","kid":"none","alg":"none","k":"\(k)"},
          {"kty":"oct","kid":"short","alg":"HS256","k":"AAAA"},
          {"kty":"EC","kid":"p521","crv":"P-521","x":"AA","y":"AA"},
          {"kty":"EC","kid":"bad-point","crv":"P-256","x":"\(B64.encode(Array(repeating: 1, count: 32)))","y":"\(B64.encode(Array(repeating: 2, count: 32)))"},
          {"kty":"EC","kid":"mismatch","alg":"ES384","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
          {"kty":"RSA","kid":"small","alg":"RS256","n":"\(B64.encode(Array(repeating: 0xC1, count: 128)))","e":"AQAB"},
          {"kty":"OKP","kid":"x25519","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
          {"kty":"weird"}
        ]}
        """
        let set = try KeySet.jwks(json: Array(doc.utf8))
        #expect(set.keys.map(\.kid) == ["sig"])
        #expect(set.skipped.count == 10)
    }
}
