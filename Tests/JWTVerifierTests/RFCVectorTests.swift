import Foundation
import Testing
@testable import JWTVerifier

/// Known-answer tests from RFC 7515 Appendix A and RFC 8037 Appendix A.4.
@Suite struct RFCVectorTests {
    static let payload = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    /// Before the RFC tokens' exp (1300819380); without iat the lifetime is exp − now = 380 s.
    static let now = Date(timeIntervalSince1970: 1_300_819_000)

    @Test func a1HS256() throws {
        let jwks = #"{"keys":[{"kty":"oct","alg":"HS256","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}"#
        let verifier = JWTVerifier(keys: try KeySet.jwks(json: Array(jwks.utf8)))
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\(Self.payload).dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        let claims = try verifier.verify(token, now: Self.now)
        #expect(claims.issuer == "joe")
        #expect(claims.bool("http://example.com/is_root") == true)
        #expect(claims.expiresAt == Date(timeIntervalSince1970: 1_300_819_380))
        #expect(thrownError { try verifier.verify(token, now: Date(timeIntervalSince1970: 1_300_819_380 + 61)) } == .expired)
        #expect(thrownError { try verifier.verify(flippingSignatureByte(token), now: Self.now) } == .badSignature)
    }

    static let rsaJWKS = #"{"keys":[{"kty":"RSA","alg":"RS256","n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ","e":"AQAB"}]}"#
    static let rs256Token = "eyJhbGciOiJSUzI1NiJ9.\(payload).cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"

    @Test func a2RS256() throws {
        let verifier = JWTVerifier(keys: try KeySet.jwks(json: Array(Self.rsaJWKS.utf8)))
        let claims = try verifier.verify(Self.rs256Token, now: Self.now)
        #expect(claims.issuer == "joe")
        #expect(thrownError { try verifier.verify(flippingSignatureByte(Self.rs256Token), now: Self.now) } == .badSignature)
        #expect(thrownError { try verifier.verify(replacingPayload(Self.rs256Token, with: #"{"iss":"joe","exp":1300819380,"http://example.com/is_root":false}"#), now: Self.now) } == .badSignature)
    }

    @Test func a2RSAWithoutAlgNeedsConfiguredDefault() throws {
        let noAlg = Self.rsaJWKS.replacingOccurrences(of: #""alg":"RS256","#, with: "")
        let skipped = try KeySet.jwks(json: Array(noAlg.utf8))
        #expect(skipped.keys.isEmpty)
        #expect(skipped.skipped.count == 1)
        let pinned = try KeySet.jwks(json: Array(noAlg.utf8), rsaAlgorithm: .rs256)
        _ = try JWTVerifier(keys: pinned).verify(Self.rs256Token, now: Self.now)
        // Pinned to PS256 instead: the RS256 token no longer finds a key.
        let ps = try KeySet.jwks(json: Array(noAlg.utf8), rsaAlgorithm: .ps256)
        #expect(thrownError { try JWTVerifier(keys: ps).verify(Self.rs256Token, now: Self.now) } == .unknownKey)
    }

    @Test func a3ES256() throws {
        // No alg in the JWK: P-256 infers ES256.
        let jwks = #"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#
        let keys = try KeySet.jwks(json: Array(jwks.utf8))
        #expect(keys.keys.map(\.algorithm) == [.es256])
        let verifier = JWTVerifier(keys: keys)
        let token = "eyJhbGciOiJFUzI1NiJ9.\(Self.payload).DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
        #expect(try verifier.verify(token, now: Self.now).issuer == "joe")
        #expect(thrownError { try verifier.verify(flippingSignatureByte(token), now: Self.now) } == .badSignature)
        // R||S must be exactly 64 bytes: a DER-encoded or truncated signature is refused.
        let s = segments(token)
        let short = [s[0], s[1], B64.encode(Array(B64.decode(s[2]).dropLast()))].joined(separator: ".")
        #expect(thrownError { try verifier.verify(short, now: Self.now) } == .badSignature)
    }

    @Test func rfc8037A4Ed25519() throws {
        let jwks = #"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#
        let verifier = JWTVerifier(keys: try KeySet.jwks(json: Array(jwks.utf8)))
        let token = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        let jws = try verifier.verifySignature(token)
        #expect(jws.algorithm == .edDSA)
        #expect(String(decoding: jws.payload, as: UTF8.self) == "Example of Ed25519 signing")
        #expect(thrownError { try verifier.verifySignature(flippingSignatureByte(token)) } == .badSignature)
        // Not a JWT: the full verify refuses the payload.
        #expect(thrownError { try verifier.verify(token, now: Self.now) } == .malformed)
    }
}

/// The token cache's key: SHA-256 (FIPS 180-4 test vectors), computed on the stack.
@Suite("Token digest")
struct TokenDigestTests {
    static func digest(_ text: String) -> TokenDigest {
        Array(text.utf8).withUnsafeBufferPointer { SHA256Digest.hash($0) }
    }

    /// The four words as the digest's 32 bytes, in order.
    static func hex(_ digest: TokenDigest) -> String {
        withUnsafeBytes(of: (digest.a, digest.b, digest.c, digest.d)) { bytes in
            bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        }
    }

    @Test("FIPS 180-4 vectors: empty, \"abc\", and the two-block message")
    func vectors() {
        #expect(Self.hex(Self.digest("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(Self.hex(Self.digest("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(Self.hex(Self.digest("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test("Different tokens give different keys; the same token the same key")
    func keys() {
        #expect(Self.digest("a.b.c") == Self.digest("a.b.c"))
        #expect(Self.digest("a.b.c") != Self.digest("a.b.d"))
    }
}
