import NIOCore
import NIOHTTP1
import Testing

@testable import Gateway

/// The order of the request phases in `RequestPipeline.decide`: identify → route → CORS → auth.
@Suite("Request pipeline")
struct PipelineTests {
    let runtime: GatewayRuntime
    let listener = ListenerInfo(name: "public", role: .proxy, isTLS: true)

    init() throws {
        let config = try ConfigFixture().parse(minimalYAML + """
            client_ip: { trusted_proxies: [10.0.0.0/8] }
            cors:
              allowed_origins: ["https://*.barberpro.com.ar"]
              allowed_methods: [GET, POST, PUT]
              allowed_headers: [authorization, content-type]
              allow_credentials: true
            \(AuthenticationTests.section)
            upstreams:
              booking: { endpoints: [127.0.0.1:3001] }
            routes:
              - { name: login, match: { path_prefix: /api/auth/login, methods: [POST] }, upstream: booking }
              - { name: admin, match: { path_prefix: /api/admin }, upstream: booking, auth: required, require_claims: { role: [admin] } }
              - { name: api, match: { path_prefix: /api/ }, upstream: booking, auth: required }
              - { name: public, match: { path_prefix: /public/ }, upstream: booking, cors: false }
            """)
        runtime = try GatewayBuilder.runtime(config, configHash: "test")
    }

    func decide(_ method: HTTPMethod, _ target: String, _ pairs: (String, String)..., peer: String = "203.0.113.7") -> PipelineDecision {
        RequestPipeline.decide(
            method: method, target: target, host: "api.barberpro.com.ar", headers: HeadFields(HTTPHeaders(pairs)),
            peer: PeerAddress(text: peer), listener: listener, runtime: runtime, allocator: ByteBufferAllocator()
        )
    }

    func field(_ decision: borrowing PipelineDecision, _ name: String) -> String? {
        decision.responseAdditions.headers.first { $0.0 == name }?.1
    }

    static let origin = ("Origin", "https://book.barberpro.com.ar")

    @Test func preflightIsAnsweredBeforeAuthAndRoutedByTheRequestedMethod() {
        let decision = decide(.OPTIONS, "/api/auth/login", Self.origin, ("Access-Control-Request-Method", "POST"),
                              ("Access-Control-Request-Headers", "content-type"))
        guard let response = decision.response else {
            Issue.record("preflight not answered: \(decision.actionDescription)")
            return
        }
        #expect(response.status == .noContent)
        #expect(response.headers["access-control-allow-origin"] == ["https://book.barberpro.com.ar"])
        #expect(response.headers["access-control-allow-credentials"] == ["true"])
        // No token needed, even on an auth: required route.
        guard decide(.OPTIONS, "/api/bookings", Self.origin, ("Access-Control-Request-Method", "PUT")).response != nil else {
            Issue.record("preflight on a protected route needed a token")
            return
        }
    }

    @Test func disallowedPreflightIs403CORSRejected() {
        let decision = decide(.OPTIONS, "/api/bookings", ("Origin", "https://evilbarberpro.com.ar"), ("Access-Control-Request-Method", "PUT"))
        guard let error = decision.error else {
            Issue.record("expected an error")
            return
        }
        #expect(error.code == "cors_rejected" && error.status == .forbidden)
        #expect(decision.responseAdditions.corsEnabled && decision.responseAdditions.headers.isEmpty)
    }

    @Test func errorsCarryCORSFields() {
        let unauthorized = decide(.GET, "/api/bookings", Self.origin)
        guard let error = unauthorized.error else {
            Issue.record("expected 401")
            return
        }
        #expect(error.status == .unauthorized)
        #expect(field(unauthorized, "access-control-allow-origin") == "https://book.barberpro.com.ar")
        let notFound = decide(.GET, "/nothing", Self.origin)
        guard let missing = notFound.error else {
            Issue.record("expected 404")
            return
        }
        #expect(missing.status == .notFound)
        #expect(field(notFound, "access-control-allow-origin") == "https://book.barberpro.com.ar")
    }

    @Test func corsFalseRouteSkipsCORS() {
        let decision = decide(.OPTIONS, "/public/x", Self.origin, ("Access-Control-Request-Method", "GET"))
        guard decision.proxyPlan != nil else {
            Issue.record("OPTIONS on a cors: false route was not proxied")
            return
        }
        #expect(!decision.responseAdditions.corsEnabled)
        // OPTIONS without Access-Control-Request-Method is ordinary: routed, and here authenticated.
        guard let error = decide(.OPTIONS, "/api/bookings", Self.origin).error else {
            Issue.record("ordinary OPTIONS skipped auth")
            return
        }
        #expect(error.status == .unauthorized)
    }

    @Test func authenticatedRequestCarriesClaimsAndStripsCopies() {
        // The runtime verifies at real time.
        let token = try! TestTokens.mint(TestTokenRequest(secret: AuthenticationTests.secret, subject: "u-42", role: "barber"))
        let decision = decide(.GET, "/api/bookings", ("Authorization", "Bearer " + token), ("X-User-Id", "spoof"))
        guard let plan = decision.proxyPlan else {
            Issue.record("expected proxy: \(decision.actionDescription)")
            return
        }
        #expect(plan.claimHeaders.map(\.1) == ["u-42", "barber"])
        #expect(["x-user-id", "x-user-role", "cf-connecting-ip", "X-User-ID"].allSatisfy(plan.removedHeaders.contains))
        guard let forbidden = decide(.GET, "/api/admin/x", ("Authorization", "Bearer " + token)).error else {
            Issue.record("expected 403")
            return
        }
        #expect(forbidden.code == "forbidden")
    }

    @Test func clientIPComesFromATrustedPeerOnly() {
        let fromProxy = decide(.POST, "/api/auth/login", ("CF-Connecting-IP", "198.51.100.9"), peer: "10.0.0.2")
        #expect(fromProxy.client == ClientIdentity(ip: "198.51.100.9", peer: "10.0.0.2", peerTrusted: true))
        if let plan = fromProxy.proxyPlan {
            #expect(!plan.removedHeaders.contains("cf-connecting-ip") && plan.removedHeaders.contains("x-user-id"))
        } else {
            Issue.record("login not proxied")
        }
        let direct = decide(.POST, "/api/auth/login", ("CF-Connecting-IP", "198.51.100.9"))
        #expect(direct.client == ClientIdentity(ip: "203.0.113.7", peer: "203.0.113.7", peerTrusted: false))
    }
}
