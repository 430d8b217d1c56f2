import Foundation
import Testing
@testable import JWTVerifier

/// Dotted claim paths, array claims, scopes, and reading `iss` before verification (issue 14).
@Suite struct ClaimPathAndScopeTests {
    func claims(_ extra: [(String, JWTSigner.ClaimValue)]) throws -> VerifiedClaims {
        let token = try mint([("exp", .integer(Int(t0) + 60))] + extra)
        return try hsVerifier().verify(token, now: date(t0))
    }

    @Test func dottedPathsWalkNestedObjects() throws {
        let c = try claims([
            ("realm_access", .json(#"{"roles":["barber","admin"],"tier":{"name":"pro"}}"#)),
            ("https://example.com/plan", .string("gold")),
            ("seats", .integer(3)), ("beta", .bool(true)),
        ])
        #expect(c.values("realm_access.roles") == ["barber", "admin"])
        #expect(c.text("realm_access.roles") == "barber,admin")
        #expect(c.string("realm_access.tier.name") == "pro")
        // A top-level name containing dots wins over the nested reading.
        #expect(c.string("https://example.com/plan") == "gold")
        #expect(c.text("seats") == "3")
        #expect(c.text("beta") == "true")
        #expect(c.values("realm_access") == nil)          // an object is no value
        #expect(c.values("realm_access.missing") == nil)
        #expect(c.values("realm_access.roles.x") == nil)  // walks through an array: nothing
        #expect(c.values("seats.x") == nil)
    }

    @Test func requireMatchesAnyArrayElementAtAPath() throws {
        let c = try claims([("realm_access", .json(#"{"roles":["barber","admin"]}"#)), ("plan", .string("pro"))])
        #expect(thrownError { try c.require(["realm_access.roles": ["admin"]]) } == nil)
        #expect(thrownError { try c.require(["realm_access.roles": ["owner", "barber"]]) } == nil)
        #expect(thrownError { try c.require(["realm_access.roles": ["owner"]]) } == .missingClaim("realm_access.roles"))
        #expect(thrownError { try c.require(["plan": ["pro"], "realm_access.roles": ["x"]]) } == .missingClaim("realm_access.roles"))
        // An array holding an object is not a list of values: it matches nothing.
        let mixed = try claims([("roles", .json(#"["admin",{"x":1}]"#))])
        #expect(thrownError { try mixed.require(["roles": ["admin"]]) } == .missingClaim("roles"))
    }

    @Test func scopesFromScopeOrScp() throws {
        let spaced = try claims([("scope", .string("profile  bookings:read bookings:write"))])
        #expect(spaced.scopes == ["profile", "bookings:read", "bookings:write"])
        #expect(thrownError { try spaced.requireScopes(any: ["x", "bookings:read"], all: []) } == nil)
        #expect(thrownError { try spaced.requireScopes(any: [], all: ["bookings:read", "bookings:write"]) } == nil)
        #expect(thrownError { try spaced.requireScopes(any: [], all: ["bookings:read", "admin"]) } == .insufficientScope)
        #expect(thrownError { try spaced.requireScopes(any: ["admin"], all: []) } == .insufficientScope)
        let scp = try claims([("scp", .strings(["bookings:read"]))])
        #expect(scp.scopes == ["bookings:read"])
        let none = try claims([])
        #expect(none.scopes.isEmpty)
        #expect(thrownError { try none.requireScopes(any: [], all: []) } == nil)
        #expect(thrownError { try none.requireScopes(any: ["a"], all: []) } == .insufficientScope)
        #expect(JWTError.insufficientScope.category == "insufficient_scope")
    }

    @Test func unverifiedIssuerOnlyReadsThePayload() throws {
        let token = try mint([("iss", .string("https://idp.example")), ("exp", .integer(Int(t0) + 60))])
        #expect(UnverifiedClaims.issuer(of: Substring(token)) == "https://idp.example")
        #expect(UnverifiedClaims.issuer(of: Substring(flippingSignatureByte(token))) == "https://idp.example")
        #expect(UnverifiedClaims.issuer(of: "a.b") == nil)
        #expect(UnverifiedClaims.issuer(of: "...") == nil)
        #expect(UnverifiedClaims.issuer(of: Substring(replacingPayload(token, with: #"{"iss":7}"#))) == nil)
    }

    @Test func signerWritesRawJSONClaims() throws {
        #expect(JWTSigner.ClaimValue.isJSON(#"{"a":[1,true,null]}"#))
        #expect(!JWTSigner.ClaimValue.isJSON("pro"))
        let c = try claims([("o", .json(#"{"a":{"b":"c"}}"#))])
        #expect(c.string("o.a.b") == "c")
    }
}
