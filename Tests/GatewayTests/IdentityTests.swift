import Foundation
import JWTVerifier
import NIOCore
import NIOHTTP1
import RateLimiter
import Testing

@testable import Gateway

/// Issue 14 on the pipeline: token sources and their removal, several issuers, claim-keyed and
/// tiered rate limits, and the config that sets them up.
@Suite("Identity")
struct IdentityTests {
    static let secretA = "identity-secret-A-0123456789-abcdefghij"
    static let secretB = "identity-secret-B-0123456789-abcdefghij"
    let listener = ListenerInfo(name: "public", role: .proxy, isTLS: true)

    static func token(_ secret: String = secretA, kid: String = "a-1", iss: String = "barberpro-auth",
                      claims extra: [(String, JWTSigner.ClaimValue)] = []) -> String {
        let now = Int(Date().timeIntervalSince1970)
        var claims: [(String, JWTSigner.ClaimValue)] = [
            ("iss", .string(iss)), ("aud", .string("barberpro-api")), ("sub", .string("u-1")),
            ("iat", .integer(now)), ("exp", .integer(now + 600)),
        ]
        for (name, value) in extra {
            claims.removeAll { $0.0 == name }
            claims.append((name, value))
        }
        return try! JWTSigner(algorithm: .hs256, secret: Array(secret.utf8), kid: kid).sign(claims)
    }

    static let single = """
        jwt:
          issuer: barberpro-auth
          audiences: [barberpro-api]
          keys:
            - { kid: a-1, algorithm: HS256, secret: "\(secretA)" }
          sources: [header, "cookie:session", "query:access_token", websocket_protocol]
        rate_limits:
          policies:
            per_user: { limit: 3, window: 1m, key: "claim:sub" }
            per_org: { limit: 3, window: 1m, key: ["claim:org.id", route] }
            per_ip: { limit: 100, window: 1m }
            plan:
              key: jwt_subject
              tier_claim: billing.plan
              tiers: { free: 2/1m, pro: { limit: 50, window: 15m } }
              default_tier: free
        upstreams:
          booking: { endpoints: [127.0.0.1:3001] }
        routes:
          - { name: ws, match: { path_prefix: /ws/ }, upstream: booking, auth: required, allow_token_sources: [query, websocket_protocol] }
          - name: api
            match: { path_prefix: /api/ }
            upstream: booking
            auth: optional
            rate_limits: [per_ip, per_user, per_org, plan]
        """

    static func runtime(_ yaml: String) throws -> GatewayRuntime {
        try GatewayBuilder.runtime(try ConfigFixture().parse(minimalYAML + yaml), configHash: "test")
    }

    func proxyPlan(_ runtime: GatewayRuntime, _ target: String, _ pairs: [(String, String)]) -> ProxyPlan? {
        let decision = RequestPipeline.decide(
            method: .GET, target: target, host: "api.test", headers: HeadFields(HTTPHeaders(pairs)),
            peer: PeerAddress(text: "203.0.113.7"), listener: listener, runtime: runtime, allocator: ByteBufferAllocator())
        guard let plan = decision.proxyPlan else { return nil }
        return plan
    }

    func refusal(_ runtime: GatewayRuntime, _ target: String, _ pairs: [(String, String)]) -> GatewayError? {
        let decision = RequestPipeline.decide(
            method: .GET, target: target, host: "api.test", headers: HeadFields(HTTPHeaders(pairs)),
            peer: PeerAddress(text: "203.0.113.7"), listener: listener, runtime: runtime, allocator: ByteBufferAllocator())
        if let error = decision.error { return error }
        if let plan = decision.proxyPlan { return plan.deferredError }
        return nil
    }

    @Test func cookieTokenIsVerifiedAndRemovedFromTheUpstreamRequest() throws {
        let runtime = try Self.runtime(Self.single)
        let token = Self.token()
        let plan = try #require(proxyPlan(runtime, "/api/x", [("Cookie", "a=1; session=\(token); b=2")]))
        #expect(plan.subject == "u-1")
        #expect(plan.strippedToken == .cookie("session"))
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/api/x")
        head.headers.add(name: "cookie", value: "a=1; session=\(token); b=2")
        head.headers.add(name: "cookie", value: "session=\(token)")
        let stripped = TokenLocation.cookie("session").removed(from: head)
        #expect(stripped.headers["cookie"] == ["a=1; b=2"])
    }

    @Test func queryAndSubprotocolSourcesNeedTheRouteToAllowThem() throws {
        let runtime = try Self.runtime(Self.single)
        let token = Self.token()
        let ws = try #require(proxyPlan(runtime, "/ws/chat?room=1&access_token=\(token)", []))
        #expect(ws.strippedToken == .query("access_token"))
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/ws/chat?room=1&access_token=\(token)&x")
        #expect(TokenLocation.query("access_token").removed(from: head).uri == "/ws/chat?room=1&x")
        let only = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/ws/chat?access_token=\(token)")
        #expect(TokenLocation.query("access_token").removed(from: only).uri == "/ws/chat")

        let sub = try #require(proxyPlan(runtime, "/ws/chat", [("Sec-WebSocket-Protocol", "bearer, \(token), chat")]))
        #expect(sub.strippedToken == .websocketProtocol)
        var upgrade = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/ws/chat")
        upgrade.headers.add(name: "sec-websocket-protocol", value: "bearer, \(token), chat")
        #expect(TokenLocation.websocketProtocol.removed(from: upgrade).headers["sec-websocket-protocol"] == ["bearer, chat"])
        // A bare parameter, or `bearer` with nothing after it, is a malformed token.
        #expect(refusal(runtime, "/ws/chat?access_token", [])?.rejectionReason == "malformed")
        #expect(refusal(runtime, "/ws/chat?access_token=", [])?.rejectionReason == "malformed")
        #expect(refusal(runtime, "/ws/chat", [("Sec-WebSocket-Protocol", "bearer")])?.rejectionReason == "malformed")

        // /api/ does not opt in: the query token is not read, the request is anonymous.
        let api = try #require(proxyPlan(runtime, "/api/x?access_token=\(token)", []))
        #expect(api.subject == nil)
        #expect(api.strippedToken == nil)
    }

    @Test func forwardTokenKeepsTheTokenWhereItWas() throws {
        let runtime = try Self.runtime(Self.single.replacingOccurrences(
            of: "websocket_protocol]\n", with: "websocket_protocol]\n  forward_token: true\n"))
        let plan = try #require(proxyPlan(runtime, "/api/x", [("Authorization", "Bearer \(Self.token())")]))
        #expect(plan.subject == "u-1")
        #expect(plan.strippedToken == nil)
        let runtimeDefault = try Self.runtime(Self.single)
        #expect(self.proxyPlan(runtimeDefault, "/api/x", [("Authorization", "Bearer \(Self.token())")])?.strippedToken == .authorization)
    }

    @Test func claimKeysAndTiers() throws {
        let runtime = try Self.runtime(Self.single)
        let pro = Self.token(claims: [("org", .json(#"{"id":"o-9"}"#)), ("billing", .json(#"{"plan":"pro"}"#))])
        let checks = try #require(proxyPlan(runtime, "/api/x", [("Authorization", "Bearer \(pro)")])?.rateLimit?.checks)
        #expect(checks.map(\.1) == [
            "gw:rl:{ip:203.0.113.7}:per_ip", "gw:rl:{sub:u-1}:per_user", "gw:rl:{c:org.id:o-9}:per_org:route:api",
            "gw:rl:{sub:u-1}:plan:tier:pro",
        ])
        #expect(checks[3].0.limit == 50 && checks[3].0.windowSeconds == 900)

        // No claim: the default tier; an unknown plan: the default tier too.
        let plain = Self.token(claims: [("billing", .json(#"{"plan":"platinum"}"#))])
        let planless = try #require(proxyPlan(runtime, "/api/x", [("Authorization", "Bearer \(plain)")])?.rateLimit?.checks)
        #expect(planless[3].1 == "gw:rl:{sub:u-1}:plan:tier:free" && planless[3].0.limit == 2)

        // Anonymous: claim parts fall back to the client address.
        let anonymous = try #require(proxyPlan(runtime, "/api/x", [])?.rateLimit?.checks)
        #expect(anonymous.map(\.1) == [
            "gw:rl:{ip:203.0.113.7}:per_ip", "gw:rl:{ip:203.0.113.7}:per_user",
            "gw:rl:{ip:203.0.113.7}:per_org:route:api", "gw:rl:{ip:203.0.113.7}:plan:tier:free",
        ])

        // A refused token is counted by the address-only policy, never by the claim ones.
        guard case .matched(let route) = runtime.routes.match(host: "api.test", path: "/api/x", method: "GET") else {
            Issue.record("no route")
            return
        }
        #expect(route.rateLimits.map(\.countsRefusedRequests) == [true, false, false, false])
        let refused = try #require(proxyPlan(runtime, "/api/x", [("Authorization", "Bearer x.y.z")]))
        #expect(refused.deferredError != nil)
        #expect(refused.rateLimit?.checks.map(\.1) == ["gw:rl:{ip:203.0.113.7}:per_ip"])
    }

    static let providers = """
        jwt:
          providers:
            - { name: staff, issuer: barberpro-staff, audiences: [barberpro-api], keys: [{ kid: a-1, algorithm: HS256, secret: "\(secretA)" }] }
            - { name: partners, issuer: partners-idp, audiences: [barberpro-api], keys: [{ kid: b-1, algorithm: HS256, secret: "\(secretB)" }] }
          forward_claims: { sub: x-user-id }
        upstreams:
          booking: { endpoints: [127.0.0.1:3001] }
        routes:
          - { name: staff, match: { path_prefix: /staff/ }, upstream: booking, auth: required, providers: [staff] }
          - { name: api, match: { path_prefix: /api/ }, upstream: booking, auth: required }
        """

    @Test func theIssuerPicksTheProviderAndNoOtherKeyIsTried() throws {
        let runtime = try Self.runtime(Self.providers)
        let staff = Self.token(Self.secretA, kid: "a-1", iss: "barberpro-staff")
        let partner = Self.token(Self.secretB, kid: "b-1", iss: "partners-idp")
        #expect(proxyPlan(runtime, "/api/x", [("Authorization", "Bearer \(staff)")])?.deferredError == nil)
        #expect(proxyPlan(runtime, "/api/x", [("Authorization", "Bearer \(partner)")])?.claimHeaders.first?.1 == "u-1")
        let crossed = Self.token(Self.secretB, kid: "b-1", iss: "barberpro-staff")
        #expect(refusal(runtime, "/api/x", [("Authorization", "Bearer \(crossed)")])?.rejectionReason == "unknown_key")
        let crossedKid = Self.token(Self.secretB, kid: "a-1", iss: "barberpro-staff")
        #expect(refusal(runtime, "/api/x", [("Authorization", "Bearer \(crossedKid)")])?.rejectionReason == "bad_signature")
        let stranger = Self.token(Self.secretA, kid: "a-1", iss: "nobody")
        #expect(refusal(runtime, "/api/x", [("Authorization", "Bearer \(stranger)")])?.rejectionReason == "wrong_issuer")
        #expect(refusal(runtime, "/staff/x", [("Authorization", "Bearer \(partner)")])?.rejectionReason == "wrong_issuer")
        #expect(proxyPlan(runtime, "/staff/x", [("Authorization", "Bearer \(staff)")])?.subject == "u-1")
    }

    @Test func discoveryDocumentMustNameTheIssuerAndAnHTTPSJWKS() throws {
        func endpoint(_ json: String) -> JWKSEndpoint? {
            try? OIDCDiscovery.jwksEndpoint(Array(json.utf8), issuer: "https://idp.test/realms/a")
        }
        let good = endpoint(#"{"issuer":"https://idp.test/realms/a","jwks_uri":"https://keys.test:8443/certs?v=2"}"#)
        #expect(good == JWKSEndpoint(url: "https://keys.test:8443/certs?v=2"))
        #expect(good?.target == "/certs?v=2")
        #expect(endpoint(#"{"issuer":"https://idp.test/realms/b","jwks_uri":"https://keys.test/certs"}"#) == nil)
        #expect(endpoint(#"{"issuer":"https://idp.test/realms/a","jwks_uri":"http://keys.test/certs"}"#) == nil)
        #expect(endpoint(#"{"issuer":"https://idp.test/realms/a"}"#) == nil)
        #expect(endpoint("[]") == nil)
    }

    @Test func testTokensMintEveryShape() throws {
        var request = TestTokenRequest(secret: Self.secretA, subject: "u-7")
        request.claims = [#"realm_access.roles=["admin"]"#, "billing.plan=pro", "billing.seats=2", "exp=1"]
        request.scopes = ["a", "b"]
        let token = try TestTokens.mint(request)
        let verifier = JWTVerifier(keys: KeySet(keys: [try VerificationKey.hmac(kid: nil, algorithm: .hs256, secret: Array(Self.secretA.utf8))]))
        // exp=1 replaced the standard exp: the token is expired.
        #expect(throws: JWTError.expired) { try verifier.verify(token) }
        request.claims.removeLast()
        let claims = try verifier.verify(try TestTokens.mint(request))
        #expect(claims.values("realm_access.roles") == ["admin"])
        #expect(claims.string("billing.plan") == "pro" && claims.number("billing.seats") == 2)
        #expect(claims.scopes == ["a", "b"])
        request.claims = ["a=1", "a.b=2"]
        #expect(throws: TestTokenError.self) { try TestTokens.mint(request) }
    }

    @Test func configErrorsNameTheKey() throws {
        let fixture = try ConfigFixture()
        let base = minimalYAML + """
            jwt:
              issuer: i
              audiences: [a]
              keys: [{ kid: a-1, algorithm: HS256, secret: "\(Self.secretA)" }]
              sources: [header, "cookie:", websocket_protocl]
            rate_limits:
              policies:
                t1: { limit: 5, window: 1m, tier_claim: plan, tiers: { free: 0/1m }, default_tier: free }
                t2: { key: "claim:", tier_claim: plan, tiers: { free: 5/1m }, default_tier: gold }
            upstreams:
              booking: { endpoints: [127.0.0.1:3001] }
            routes:
              - { name: a, match: { path_prefix: /a/ }, upstream: booking, providers: [x], require_scopes: { any: ["a b"] } }
              - { name: b, match: { path_prefix: /b/ }, upstream: booking, auth: required, allow_token_sources: [cookie] }
            """
        let errors = fixture.errors(base)
        for line in [
            "jwt.sources[1]: expected cookie:NAME with a cookie name made of token characters, got 'cookie:'",
            "jwt.sources[2]: expected header, cookie:NAME, query:NAME or websocket_protocol, got 'websocket_protocl' (did you mean 'websocket_protocol'?)",
            "rate_limits.policies.t1.limit: a tiered policy sets limit and window per tier (tiers: {NAME: LIMIT/WINDOW})",
            "rate_limits.policies.t1.tiers.free: expected LIMIT/WINDOW such as 100/15m (a limit >= 1, a window of whole seconds >= 1s), got '0/1m'",
            "rate_limits.policies.t2.key: expected claim:PATH with a dotted claim path such as claim:sub, got 'claim:'",
            "rate_limits.policies.t2.default_tier: unknown tier 'gold' (defined: free)",
            "routes[0].providers: needs auth: required or optional (it applies to a verified token)",
            "routes[0].providers: needs jwt.providers (the single-issuer jwt section has no provider names)",
            "routes[0].require_scopes.any[0]: a scope is printable ASCII without spaces, '\"' or '\\', got 'a b'",
            "routes[1].allow_token_sources[0]: expected query or websocket_protocol, got 'cookie'",
        ] {
            #expect(errors.contains(line), "missing \(line); got:\n\(errors.joined(separator: "\n"))")
        }
        let mixed = minimalYAML + """
            jwt:
              issuer: i
              providers:
                - { name: a, issuer: i, audiences: [a], jwks_url: "http://idp/keys" }
                - { name: a, issuer: i, audiences: [a], keys: [{ kid: k, algorithm: HS256, secret: "\(Self.secretA)" }] }
            upstreams:
              booking: { endpoints: [127.0.0.1:3001] }
            routes:
              - { name: a, match: { path_prefix: /a/ }, upstream: booking, auth: required, providers: [b] }
            """
        let mixedErrors = fixture.errors(mixed)
        for line in [
            "jwt.issuer: cannot be combined with jwt.providers (set it on each provider)",
            "jwt.providers[0].jwks_url: must be an https:// URL, got 'http://idp/keys'",
            "jwt.providers[1].name: duplicate provider 'a' (first at jwt.providers[0].name)",
            "routes[0].providers[0]: unknown provider 'b' (did you mean 'a'?)",
        ] {
            #expect(mixedErrors.contains(line), "missing \(line); got:\n\(mixedErrors.joined(separator: "\n"))")
        }
    }
}
