import Foundation
import JWTVerifier
import NIOHTTP1
import Testing

@testable import Gateway

/// Every authentication outcome of issue 4 §2 on `Authenticator` alone, with a fixed clock.
@Suite("Authentication")
struct AuthenticationTests {
    static let secret = "test-secret-0123456789-abcdefghijk"
    static let now = Date(timeIntervalSince1970: 1_800_000_000)
    static let section = """
        jwt:
          issuer: barberpro-auth
          audiences: [barberpro-api]
          keys:
            - { kid: hs-1, algorithm: HS256, secret: "\(secret)" }
          forward_claims: { sub: x-user-id, role: x-user-role }
        """

    let authenticator: Authenticator

    init() throws {
        let config = try ConfigFixture().parse(minimalYAML + Self.section)
        authenticator = try Authenticator.make(try #require(config.jwt), now: { Self.now }).get()
    }

    static func token(
        _ claims: [(String, JWTSigner.ClaimValue)]? = nil, secret: String = secret, kid: String? = "hs-1"
    ) -> String {
        let iat = Int(now.timeIntervalSince1970)
        let claims = claims ?? [
            ("iss", .string("barberpro-auth")), ("aud", .string("barberpro-api")), ("sub", .string("u-42")),
            ("role", .string("barber")), ("iat", .integer(iat)), ("exp", .integer(iat + 3600)),
        ]
        return try! JWTSigner(algorithm: .hs256, secret: Array(secret.utf8), kid: kid).sign(claims)
    }

    func outcome(_ authorization: String?, mode: AuthMode = .required, claims: [String: [String]] = [:]) -> Authenticator.Outcome {
        var headers = HTTPHeaders()
        if let authorization { headers.add(name: "Authorization", value: authorization) }
        return authenticator.authenticate(HeadFields(headers), mode: mode, requiredClaims: claims)
    }

    func rejection(_ outcome: Authenticator.Outcome) -> GatewayError? {
        if case .rejected(let error) = outcome { return error }
        return nil
    }

    func challenge(_ outcome: Authenticator.Outcome) -> String? {
        rejection(outcome)?.headers.first { $0.0 == "www-authenticate" }?.1
    }

    @Test func validTokenForwardsClaims() {
        guard case .authenticated(let headers, _) = outcome("Bearer " + Self.token()) else {
            Issue.record("expected success")
            return
        }
        #expect(headers.map(\.0) == ["x-user-id", "x-user-role"])
        #expect(headers.map(\.1) == ["u-42", "barber"])
        // The scheme is case-insensitive.
        guard case .authenticated = outcome("bearer " + Self.token()) else {
            Issue.record("lowercase scheme refused")
            return
        }
    }

    @Test func missingTokenOnRequiredIsABareChallenge() {
        let result = outcome(nil)
        #expect(rejection(result)?.status == .unauthorized)
        #expect(rejection(result)?.code == "invalid_token")
        #expect(challenge(result) == "Bearer realm=\"api\"")
        // Another scheme is no bearer token at all.
        #expect(challenge(outcome("Basic dXNlcjpwYXNz")) == "Bearer realm=\"api\"")
    }

    @Test func optionalRoutes() {
        guard case .anonymous = outcome(nil, mode: .optional) else {
            Issue.record("anonymous refused on optional")
            return
        }
        guard case .authenticated = outcome("Bearer " + Self.token(), mode: .optional) else {
            Issue.record("valid token refused on optional")
            return
        }
        // An invalid token is a 401 on optional routes too.
        #expect(challenge(outcome("Bearer " + Self.token(secret: "another-secret-0123456789-abcdefgh"), mode: .optional))
                == "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"bad_signature\"")
        // require_claims needs a token whatever the mode.
        #expect(rejection(outcome(nil, mode: .optional, claims: ["role": ["admin"]]))?.status == .unauthorized)
    }

    @Test func noneNeverLooksAtTheToken() {
        guard case .anonymous = outcome("Bearer garbage", mode: .none) else {
            Issue.record("auth: none verified a token")
            return
        }
    }

    @Test func eachFailureCategory() {
        let iat = Int(Self.now.timeIntervalSince1970)
        func category(_ authorization: String) -> String? {
            guard let value = challenge(outcome(authorization)) else { return nil }
            #expect(!value.contains(authorization.dropFirst(7)), "token echoed")
            return value.components(separatedBy: "error_description=\"").last?.dropLast().description
        }
        let base: [(String, JWTSigner.ClaimValue)] = [("iss", .string("barberpro-auth")), ("aud", .string("barberpro-api"))]
        #expect(category("Bearer " + Self.token(base + [("exp", .integer(iat - 3600))])) == "expired")
        #expect(category("Bearer " + Self.token(base + [("exp", .integer(iat + 3600)), ("nbf", .integer(iat + 600))])) == "not_yet_valid")
        #expect(category("Bearer " + Self.token(base + [("sub", .string("x"))])) == "missing_claim")
        #expect(category("Bearer " + Self.token([("iss", .string("other")), ("aud", .string("barberpro-api")), ("exp", .integer(iat + 60))])) == "wrong_issuer")
        #expect(category("Bearer " + Self.token([("iss", .string("barberpro-auth")), ("aud", .string("other")), ("exp", .integer(iat + 60))])) == "wrong_audience")
        #expect(category("Bearer " + Self.token(base + [("iat", .integer(iat)), ("exp", .integer(iat + 8 * 86_400))])) == "lifetime_too_long")
        #expect(category("Bearer " + Self.token(kid: "nope")) == "unknown_key")
        #expect(category("Bearer " + Self.token(secret: "another-secret-0123456789-abcdefgh")) == "bad_signature")
        #expect(category("Bearer not.a.jwt") == "malformed")
        #expect(category("Bearer a b") == "malformed")
        #expect(category("Bearer ") == "malformed")
        // alg: none, with and without a signature.
        let header = Data(#"{"alg":"none","typ":"JWT"}"#.utf8).base64EncodedString()
            .replacingOccurrences(of: "=", with: "").replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        let payload = Self.token().split(separator: ".")[1]
        #expect(category("Bearer \(header).\(payload).") != nil)
        #expect(category("Bearer \(header).\(payload).") == "malformed" || category("Bearer \(header).\(payload).") == "unsupported_algorithm")
    }

    @Test func severalAuthorizationFieldsAreMalformed() {
        var headers = HTTPHeaders()
        headers.add(name: "Authorization", value: "Bearer " + Self.token())
        headers.add(name: "Authorization", value: "Bearer " + Self.token())
        let result = authenticator.authenticate(HeadFields(headers), mode: .required, requiredClaims: [:])
        #expect(rejection(result)?.headers.first?.1.contains("malformed") == true)
    }

    @Test func requireClaimsIs403() {
        let result = outcome("Bearer " + Self.token(), claims: ["role": ["admin"]])
        #expect(rejection(result)?.status == .forbidden)
        #expect(rejection(result)?.code == "forbidden")
        guard case .authenticated = outcome("Bearer " + Self.token(), claims: ["role": ["admin", "barber"]]) else {
            Issue.record("allowed role refused")
            return
        }
    }

    @Test func claimValuesThatCannotBeHeadersAreDropped() {
        let iat = Int(Self.now.timeIntervalSince1970)
        let token = Self.token([
            ("iss", .string("barberpro-auth")), ("aud", .string("barberpro-api")), ("sub", .string("evil\r\nx-admin: 1")),
            ("role", .strings(["a", "b"])), ("exp", .integer(iat + 60)),
        ])
        guard case .authenticated(let headers, _) = outcome("Bearer " + token) else {
            Issue.record("expected success")
            return
        }
        #expect(headers.map(\.0) == ["x-user-role"])
        #expect(headers.first?.1 == "a,b")
        // Deep in a long value, where the check reads eight bytes at a time: still dropped.
        for bad in ["\u{01}", "\u{7f}", "\n"] {
            let long = Self.token([
                ("iss", .string("barberpro-auth")), ("aud", .string("barberpro-api")),
                ("sub", .string(String(repeating: "u", count: 19) + bad + String(repeating: "v", count: 12))),
                ("role", .strings(["a", "b"])), ("exp", .integer(iat + 60)),
            ])
            guard case .authenticated(let headers, _) = outcome("Bearer " + long) else {
                Issue.record("expected success")
                return
            }
            #expect(headers.map(\.0) == ["x-user-role"], "\(bad.unicodeScalars.first!.value)")
        }
    }

    @Test func bearerParsing() {
        /// The token of a request with these `Authorization` values.
        func bearerToken(_ values: [String]) -> Authenticator.BearerToken {
            Authenticator.bearerToken(in: HeadFields(HTTPHeaders(values.map { ("Authorization", $0) })))
        }
        #expect(bearerToken([]) == .absent)
        #expect(bearerToken(["Basic abc"]) == .absent)
        #expect(bearerToken(["Bearer abc.def-_~+/="]) == .token("abc.def-_~+/="))
        #expect(bearerToken(["Bearer   abc  "]) == .token("abc"))
        #expect(bearerToken(["Bearer"]) == .malformed)
        #expect(bearerToken(["Bearer a=b"]) == .malformed)
        #expect(bearerToken(["Bearer a", "Bearer a"]) == .malformed)
        #expect(bearerToken(["bEARER\tabc"]) == .absent)
        #expect(bearerToken(["BEARER abc=="]) == .token("abc=="))
        #expect(bearerToken(["Bearer =="]) == .malformed)
        #expect(bearerToken(["Bearer \t abc\t "]) == .token("abc"))
        #expect(bearerToken(["Bearer ab\u{e9}c"]) == .malformed)
        #expect(bearerToken(["Bearers abc"]) == .absent)
        // From the fields: any case of the name, and two of them refused whatever their case.
        #expect(Authenticator.bearerToken(in: HeadFields(HTTPHeaders([("AUTHORIZATION", "Bearer t")]))) == .token("t"))
        #expect(Authenticator.bearerToken(in: HeadFields(HTTPHeaders([("x", "y")]))) == .absent)
        #expect(Authenticator.bearerToken(in: HeadFields(HTTPHeaders([("authorization", "Bearer t"), ("Authorization", "Basic u")]))) == .malformed)
    }

    /// Every ASCII byte against RFC 6750 §2.1's `b64token` alphabet, spelled out here as ranges.
    @Test func b64TokenAlphabetIsExactlyTheRFCs() {
        for byte in UInt8(0)..<128 {
            let expected = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || "-._~+/".utf8.contains(byte)
            let text = "a" + String(Character(Unicode.Scalar(byte))) + "b"
            #expect(Authenticator.isB64Token(Substring(text)) == expected, "byte \(byte)")
        }
        #expect(!Authenticator.isB64Token("ab\u{e9}c"))
        #expect(Authenticator.isB64Token("abc==") && !Authenticator.isB64Token("==") && !Authenticator.isB64Token("a=b"))
    }

    @Test func shortSecretsAreStartupErrorsWithoutTheSecret() throws {
        let config = try ConfigFixture().parse(minimalYAML + """
            jwt:
              issuer: i
              audiences: [a]
              keys:
                - { kid: a, algorithm: HS256, secret: dev-only-secret-change-me }
                - { kid: b, algorithm: HS512, secret: "\(Self.secret)" }
            """)
        let errors = GatewayBuilder.unsupportedFeatures(config).map(\.description)
        #expect(errors.count == 2)
        #expect(errors[0].hasPrefix("jwt.keys[0].secret: an HS256 secret must be at least 32 bytes"))
        #expect(errors[1].hasPrefix("jwt.keys[1].secret: an HS512 secret must be at least 64 bytes"))
        #expect(!errors.joined().contains("dev-only-secret-change-me") && !errors.joined().contains(Self.secret))
    }

    @Test func jwksURLIsAcceptedWithoutFetching() throws {
        let config = try ConfigFixture().parse(minimalYAML + """
            jwt: { issuer: i, audiences: [a], jwks_url: "https://auth.example/jwks.json" }
            """)
        #expect(GatewayBuilder.unsupportedFeatures(config).isEmpty)
    }

    @Test func testTokensVerify() throws {
        let config = try ConfigFixture().parse(minimalYAML + Self.section)
        let jwt = try #require(config.jwt)
        let minted = try TestTokens.mint(TestTokenRequest(secret: nil, subject: "u-7", role: "admin", ttl: "15m"), config: jwt, now: Self.now)
        guard case .authenticated(let headers, _) = outcome("Bearer " + minted, claims: ["role": ["admin"]]) else {
            Issue.record("minted token refused")
            return
        }
        #expect(headers.map(\.1) == ["u-7", "admin"])
        let plain = try TestTokens.mint(TestTokenRequest(secret: Self.secret, subject: "u-8"), now: Self.now)
        guard case .authenticated = outcome("Bearer " + plain) else {
            Issue.record("default iss/aud token refused")
            return
        }
        #expect(throws: TestTokenError.self) { try TestTokens.mint(TestTokenRequest(secret: "short", subject: "u")) }
        #expect(throws: TestTokenError.self) { try TestTokens.mint(TestTokenRequest(secret: Self.secret, subject: "u", ttl: "1 hour")) }
    }
}
