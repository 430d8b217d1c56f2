import Foundation
import JWTVerifier
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import Gateway

/// Which policies count a request authentication refuses (`RequestPipeline.countedRefusal`).
@Suite("Rate limits on refused requests")
struct RefusedRequestCountingTests {
    let runtime: GatewayRuntime
    let listener = ListenerInfo(name: "public", role: .proxy, isTLS: true)

    init() throws {
        let config = try ConfigFixture().parse(minimalYAML + """
            \(AuthenticationTests.section)
            rate_limits:
              policies:
                per_ip: { limit: 3, window: 15m, key: client_ip }
                per_ip_route: { limit: 10, window: 15m, key: [client_ip, route] }
                per_user: { limit: 2, window: 15m, key: jwt_subject }
                per_user_ip: { limit: 2, window: 15m, key: [jwt_subject, client_ip] }
                per_route: { limit: 2, window: 15m, key: route }
                per_header: { limit: 2, window: 15m, key: "header:x-api-key" }
            upstreams:
              booking: { endpoints: [127.0.0.1:3001] }
            routes:
              - name: mixed
                match: { path_prefix: /mixed/ }
                upstream: booking
                auth: required
                rate_limits: [per_ip, per_ip_route, per_user, per_user_ip, per_route, per_header]
              - name: claims_only
                match: { path_prefix: /claims/ }
                upstream: booking
                auth: required
                rate_limits: [per_user, per_route, per_header]
              - name: open
                match: { path_prefix: /open/ }
                upstream: booking
                rate_limits: [per_ip]
            """)
        runtime = try GatewayBuilder.runtime(config, configHash: "test")
    }

    func decide(_ target: String, _ pairs: (String, String)..., peer: String = "203.0.113.7") -> PipelineDecision {
        RequestPipeline.decide(
            method: .GET, target: target, host: "api.test", headers: HeadFields(HTTPHeaders(pairs)),
            peer: PeerAddress(text: peer), listener: listener, runtime: runtime, allocator: ByteBufferAllocator()
        )
    }

    func freshToken() throws -> String {
        let now = Int(Date().timeIntervalSince1970)
        return try JWTSigner(algorithm: .hs256, secret: Array(AuthenticationTests.secret.utf8), kid: "hs-1").sign([
            ("iss", .string("barberpro-auth")), ("aud", .string("barberpro-api")), ("sub", .string("u-7")),
            ("iat", .integer(now)), ("exp", .integer(now + 600)),
        ])
    }

    func policies(_ request: RateLimitRequest?) -> [String] {
        request?.checks.map { $0.0.name } ?? []
    }

    @Test func refusedRequestIsCountedByClientIPPoliciesOnly() {
        for headers in [[], [("Authorization", "Bearer not.a.token")]] as [[(String, String)]] {
            let decision = RequestPipeline.decide(
                method: .GET, target: "/mixed/x", host: "api.test", headers: HeadFields(HTTPHeaders(headers + [("x-api-key", "k")])),
                peer: PeerAddress(text: "203.0.113.7"), listener: listener, runtime: runtime,
                allocator: ByteBufferAllocator()
            )
            guard let plan = decision.proxyPlan else {
                Issue.record("a refused request was not counted: \(decision.actionDescription)")
                continue
            }
            #expect(plan.deferredError?.status == .unauthorized)
            #expect(plan.deferredError?.code == "invalid_token")
            #expect(policies(plan.rateLimit) == ["per_ip", "per_ip_route"])
            #expect(plan.claimHeaders.isEmpty && plan.subject == nil)
        }
    }

    @Test func refusedRequestWithoutClientIPPoliciesIsAnsweredAtOnce() {
        guard let error = decide("/claims/x").error else {
            Issue.record("expected the 401 itself")
            return
        }
        #expect(error.status == .unauthorized)
    }

    @Test func authenticatedRequestIsCountedOnceByEveryPolicy() throws {
        let decision = decide("/mixed/x", ("Authorization", "Bearer \(try freshToken())"), ("x-api-key", "k"))
        guard let plan = decision.proxyPlan else {
            Issue.record("expected to proxy: \(decision.actionDescription)")
            return
        }
        #expect(plan.deferredError == nil)
        #expect(plan.subject == "u-7")
        #expect(policies(plan.rateLimit) == ["per_ip", "per_ip_route", "per_user", "per_user_ip", "per_route", "per_header"])
    }

    /// The counts are real: the per-IP budget of 3 is spent by refused requests, then denied.
    @Test func refusedRequestsSpendTheBudget() throws {
        let loop = EmbeddedEventLoop()
        var outcomes: [String] = []
        for _ in 0..<5 {
            guard let plan = decide("/mixed/x", peer: "198.51.100.9").proxyPlan,
                let request = plan.rateLimit
            else {
                Issue.record("not counted")
                return
            }
            // The in-process store decides at once, inside the call.
            let waiter = OutcomeCollector()
            request.service.check(request, on: loop, for: waiter)
            #expect(waiter.outcomes.count == 1)
            outcomes += waiter.outcomes
        }
        #expect(outcomes == ["allowed", "allowed", "allowed", "denied", "denied"])
    }

    @Test func keyPartsDecideWhatCountsRefusedRequests() {
        let rules = runtime.routes.routes.first { $0.name == "mixed" }?.rateLimits ?? []
        #expect(rules.map { $0.spec.name } == ["per_ip", "per_ip_route", "per_user", "per_user_ip", "per_route", "per_header"])
        #expect(rules.map(\.countsRefusedRequests) == [true, true, false, false, false, false])
    }
}

/// A `RateLimitWaiter` that writes down what it is told.
private final class OutcomeCollector: RateLimitWaiter {
    var outcomes: [String] = []

    func rateLimitDecided(_ outcome: RateLimitOutcome, service: RateLimitService) {
        switch outcome {
        case .allowed: outcomes.append("allowed")
        case .denied: outcomes.append("denied")
        case .storeUnavailable: outcomes.append("unavailable")
        }
    }
}
