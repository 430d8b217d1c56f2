import JWTVerifier
import NIOCore
import NIOHTTP1
import RateLimiter
import RateLimiterRedis
import RedisClient
import Synchronization

/// One of a route's `rate_limits`, resolved at config load.
struct RateLimitRule: Sendable {
    var spec: PolicySpec
    var key: [RateLimitKeyPart]
    /// `tier_claim`/`tiers`: the limit follows a claim (nil: `spec` applies to everyone).
    var tiers: RateLimitTierRule? = nil

    /// Keyed by the client address and neither keyed nor tiered by a token claim: it also counts
    /// requests authentication refuses (so a flood of bad tokens spends the address's budget),
    /// whereas claim-keyed policies only count authenticated outcomes.
    var countsRefusedRequests: Bool {
        self.key.contains(.clientIP) && self.tiers == nil && !self.key.contains(where: \.readsToken)
    }
}

extension RateLimitKeyPart {
    /// Read from the verified token (known only after authentication).
    var readsToken: Bool {
        switch self {
        case .jwtSubject, .claim: true
        case .clientIP, .route, .header: false
        }
    }
}

/// A tiered policy's limits: one `PolicySpec` per tier, all under the policy's name.
struct RateLimitTierRule: Sendable {
    var claim: String
    var specs: [String: PolicySpec]
    var defaultTier: String

    init(_ config: RateLimitTiersConfig, policy: RateLimitPolicy) {
        self.claim = config.claim
        self.defaultTier = config.defaultTier
        self.specs = Dictionary(uniqueKeysWithValues: config.tiers.map { tier in
            (tier.name, PolicySpec(
                name: policy.name, limit: tier.limit, windowSeconds: Int(tier.window.components.seconds),
                algorithm: policy.algorithm == .slidingLog ? .slidingLog : .slidingWindow,
                shadow: policy.shadow, ipv6Prefix: policy.ipv6Prefix))
        })
    }

    /// The tier named by the claim; the default one for anonymous requests, tokens without the
    /// claim, and values that name no tier.
    func tier(_ claims: VerifiedClaims?) -> (name: String, spec: PolicySpec) {
        if let name = claims?.text(self.claim), let spec = self.specs[name] { return (name, spec) }
        return (self.defaultTier, self.specs[self.defaultTier]!)
    }
}

/// What a request needs to be counted: the (policy, key) pairs, built before anything is sent.
struct RateLimitRequest: Sendable {
    var service: RateLimitService
    var checks: [(PolicySpec, String)]
}

/// The outcome the proxy acts on.
enum RateLimitOutcome: Sendable {
    /// Proceed; add these fields to the response (the tightest policy's numbers).
    case allowed([(String, String)])
    /// 429 with these fields (`Retry-After` included).
    case denied([(String, String)])
    /// The store did not answer in time: `on_store_error` decides.
    case storeUnavailable
}

/// Who waits for a rate-limit decision (a `RequestExchange`), told once on its own event loop.
/// An object rather than a closure: a closure kept for the trip to Redis cost two allocations
/// per request (its context, and the thunk that fitted it to `NIOLoopBound`'s generic value).
protocol RateLimitWaiter: AnyObject {
    func rateLimitDecided(_ outcome: RateLimitOutcome, service: RateLimitService)
}

/// The rate-limit stores, kept for the life of the server so a reload keeps the counts (and the
/// Redis connections when `redis.url` does not change).
final class RateLimitStores: Sendable {
    private let inProcessStore = Mutex<InProcessRateLimitStore?>(nil)

    /// The in-process store, sized by the first config that needs it (a reload keeps it, and
    /// its counts).
    func inProcess(maxKeys: Int) -> InProcessRateLimitStore {
        self.inProcessStore.withLock { store in
            if let store { return store }
            let created = InProcessRateLimitStore(maxKeys: maxKeys)
            store = created
            return created
        }
    }
    private let redis = Mutex<(url: String, store: RedisRateLimitStore)?>(nil)

    /// The Redis store for `config`, created (and its script loaded) on first use.
    func redisStore(config: RedisConfig, group: EventLoopGroup, metrics: GatewayMetrics?) -> RedisRateLimitStore {
        let url = config.connectionIdentity
        return self.redis.withLock { current in
            if let current, current.url == url { return current.store }
            let client = config.makeClient(group: group) { event in
                metrics?.redisEvents.increment([event.metricLabel])
                if let line = event.logLine { GatewayLog.error(line) }
            }
            let store = RedisRateLimitStore(client: client, timeout: .init(config.timeout), deniedCache: DeniedCache(capacity: 10_000))
            _ = store.prepare()
            if let old = current { _ = old.store.client.shutdown() }
            current = (url, store)
            return store
        }
    }
}

/// `rate_limits` as the hot path uses it: which store, how to answer, who is exempt.
final class RateLimitService: Sendable {
    enum Backend: Sendable {
        case inProcess(InProcessRateLimitStore)
        case redis(RedisRateLimitStore)
    }

    let backend: Backend
    let failOpen: Bool
    let headerStyle: RateLimiter.RateLimitHeaderStyle
    let exempt: [IPNetwork]
    let metrics: GatewayMetrics?
    /// Latency of the last Redis decision, in microseconds (`/health/detailed`).
    let lastRedisMicros = Atomic<Int>(-1)
    /// `gateway_ratelimit_decisions_total`'s series of each policy, by `Verdict`.
    private let decisionSeries: [String: [CounterSeries]]

    /// What a decision meant for one policy, as `gateway_ratelimit_decisions_total{decision}` says it.
    enum Verdict: Int, CaseIterable {
        case allowed, denied, shadowDenied, notCounted

        var label: String {
            switch self {
            case .allowed: "allowed"
            case .denied: "denied"
            case .shadowDenied: "shadow_denied"
            case .notCounted: "not_counted"
            }
        }
    }

    /// - Parameter policyNames: every policy a request may be counted under (its series are
    ///   resolved here, once).
    init(
        backend: Backend, failOpen: Bool, headerStyle: RateLimiter.RateLimitHeaderStyle, exempt: [IPNetwork],
        metrics: GatewayMetrics?, policyNames: [String]
    ) {
        self.backend = backend
        self.failOpen = failOpen
        self.headerStyle = headerStyle
        self.exempt = exempt
        self.metrics = metrics
        var series: [String: [CounterSeries]] = [:]
        if let family = metrics?.rateLimitDecisions {
            for name in policyNames {
                series[name] = Verdict.allCases.map { family.series([name, $0.label]) }
            }
        }
        self.decisionSeries = series
    }

    /// The checks for one request, or nil when nothing is to be counted (no policies, or an
    /// exempt client). A key part the request does not have — no token, a token without the
    /// claim, a missing header — falls back to the client IP, so anonymous clients still share
    /// one bucket per address.
    func request(
        rules: [RateLimitRule], clientIP: String, claims: VerifiedClaims?, headers: HeadFields, route: String
    ) -> RateLimitRequest? {
        guard !rules.isEmpty else { return nil }
        if !self.exempt.isEmpty, let bytes = IPAddressText.parse(Substring(clientIP)),
            self.exempt.contains(where: { $0.contains(bytes) })
        {
            return nil
        }
        var checks: [(PolicySpec, String)] = []
        checks.reserveCapacity(rules.count)
        func resolved(_ part: RateLimitKeyPart) -> KeyPart {
            switch part {
            case .clientIP: .clientIP(clientIP)
            case .route: .route(route)
            case .jwtSubject: claims?.subject.map(KeyPart.jwtSubject) ?? .clientIP(clientIP)
            case .claim(let path): claims?.text(path).map { KeyPart.claim(path, $0) } ?? .clientIP(clientIP)
            case .header(let name): headers.first(name: name).map { KeyPart.header(name, $0) } ?? .clientIP(clientIP)
            }
        }
        for rule in rules {
            if rule.key.count == 1 {
                // The common policies (`key: client_ip`, `key: claim:sub`, tiered or not): no list
                // of parts.
                var spec = rule.spec
                var tier: KeyPart? = nil
                if let tiers = rule.tiers {
                    let picked = tiers.tier(claims)
                    spec = picked.spec
                    tier = .tier(picked.name)
                }
                guard let key = RateLimitKey.make(policy: spec, part: resolved(rule.key[0]), then: tier) else { continue }
                checks.append((spec, key))
                continue
            }
            var parts: [KeyPart] = []
            parts.reserveCapacity(rule.key.count + 1)
            for part in rule.key { parts.append(resolved(part)) }
            var spec = rule.spec
            if let tiers = rule.tiers {
                let tier = tiers.tier(claims)
                spec = tier.spec
                parts.append(.tier(tier.name))
            }
            guard let key = RateLimitKey.make(policy: spec, parts: parts) else { continue }
            checks.append((spec, key))
        }
        return checks.isEmpty ? nil : RateLimitRequest(service: self, checks: checks)
    }

    /// Decides and counts; `waiter` is told once, on `eventLoop` (the caller's): at once for the
    /// in-process store, after the round trip for Redis.
    func check(_ request: RateLimitRequest, on eventLoop: EventLoop, for waiter: any RateLimitWaiter) {
        switch self.backend {
        case .inProcess:
            waiter.rateLimitDecided(self.decideNow(request)!, service: self)
        case .redis(let store):
            let started = NIODeadline.now()
            let waiter = NIOLoopBound(waiter, eventLoop: eventLoop)
            store.check(request.checks) { result in
                let outcome: RateLimitOutcome
                switch result {
                case .success(let decision):
                    self.lastRedisMicros.store(Int((NIODeadline.now() - started).nanoseconds / 1000), ordering: .relaxed)
                    outcome = self.outcome(decision)
                case .failure:
                    self.metrics?.redisErrors.increment([])
                    outcome = .storeUnavailable
                }
                // The Redis connection may live on another loop than the request.
                if eventLoop.inEventLoop {
                    waiter.value.rateLimitDecided(outcome, service: self)
                } else {
                    eventLoop.execute { waiter.value.rateLimitDecided(outcome, service: self) }
                }
            }
        }
    }

    /// Decides and counts now when the store is in process; nil when the decision needs a round
    /// trip (Redis: `check`).
    func decideNow(_ request: RateLimitRequest) -> RateLimitOutcome? {
        guard case .inProcess(let store) = self.backend else { return nil }
        let now = Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000)
        return self.outcome(store.check(request.checks, now: now))
    }

    /// `{"state":...}` for `/health/detailed`.
    var healthJSON: String {
        switch self.backend {
        case .inProcess: return #"{"state":"in_process"}"#
        case .redis(let store):
            return Health.redisJSON(store.client, lastDecisionMicros: self.lastRedisMicros.load(ordering: .relaxed))
        }
    }

    private func outcome(_ decision: MultiDecision) -> RateLimitOutcome {
        // Every policy a request is counted under is one of the config's (tiers keep its name).
        for entry in decision.decisions where !self.decisionSeries.isEmpty {
            // A policy that would allow a request another policy denied was not counted.
            let verdict: Verdict = !entry.decision.allowed ? (entry.policy.shadow ? .shadowDenied : .denied)
                : decision.allowed ? .allowed : .notCounted
            self.decisionSeries[entry.policy.name]?[verdict.rawValue].increment()
        }
        let fields = RateLimitHeaders.fields(for: decision, style: self.headerStyle, lowercaseNames: true)
        return decision.allowed ? .allowed(fields) : .denied(fields)
    }
}

extension GatewayError {
    /// 429 with the policy's fields and `Retry-After` (whole seconds, ≥ 1, never before the reset).
    static func rateLimited(_ fields: [(String, String)]) -> GatewayError {
        GatewayError(status: .tooManyRequests, code: "rate_limited", message: "too many requests", headers: fields)
    }

    static let rateLimiterUnavailable = GatewayError(
        status: .serviceUnavailable, code: "rate_limiter_unavailable", message: "the rate limiter cannot answer",
        headers: [("retry-after", "1")]
    )
}
