/// The state of one key under one policy, whichever algorithm it uses.
public enum PolicyLimiter: Sendable, Hashable {
    case slidingWindow(SlidingWindowLimiter)
    case slidingLog(SlidingLogLimiter)

    /// Fresh (empty) state for `policy`.
    public init(policy: PolicySpec) {
        switch policy.algorithm {
        case .slidingWindow: self = .slidingWindow(SlidingWindowLimiter(limit: policy.limit, windowMs: policy.windowMs))
        case .slidingLog: self = .slidingLog(SlidingLogLimiter(limit: policy.limit, windowMs: policy.windowMs))
        }
    }

    /// This state under a possibly reloaded policy: a new limit keeps the counts; a new window or
    /// algorithm starts afresh (old counts mean nothing under them).
    public func adapted(to policy: PolicySpec) -> PolicyLimiter {
        switch (self, policy.algorithm) {
        case (.slidingWindow(var l), .slidingWindow) where l.windowMs == policy.windowMs:
            l.limit = policy.limit
            return .slidingWindow(l)
        case (.slidingLog(var l), .slidingLog) where l.windowMs == policy.windowMs:
            l.limit = policy.limit
            return .slidingLog(l)
        default:
            return PolicyLimiter(policy: policy)
        }
    }

    public func peek(now: Int64, cost: Int = 1) -> Decision {
        switch self {
        case .slidingWindow(let l): l.peek(now: now, cost: cost)
        case .slidingLog(let l): l.peek(now: now, cost: cost)
        }
    }

    public mutating func decide(now: Int64, cost: Int = 1) -> Decision {
        switch self {
        case .slidingWindow(var l):
            let d = l.decide(now: now, cost: cost)
            self = .slidingWindow(l)
            return d
        case .slidingLog(var l):
            let d = l.decide(now: now, cost: cost)
            self = .slidingLog(l)
            return d
        }
    }

    /// After this instant the state is equivalent to a fresh one.
    public var expiresAt: Int64 {
        switch self {
        case .slidingWindow(let l): l.expiresAt
        case .slidingLog(let l): l.expiresAt
        }
    }
}

/// The all-or-nothing multi-policy decision, as pure maths over loaded states.
enum MultiPolicy {
    /// Decides `requests` at `now`. `load` returns the stored state of a key (nil: none).
    /// Returns the decision and the states to store back — empty when the request is denied:
    /// if any enforced policy denies, no policy is counted. Shadow policies never deny; one that
    /// would deny is not counted either (the same rule an enforced policy follows, and what keeps
    /// a sliding log within `limit` entries).
    static func check(
        _ requests: [(PolicySpec, String)],
        now: Int64,
        cost: Int,
        load: (String) -> PolicyLimiter?
    ) -> (MultiDecision, writes: [String: PolicyLimiter]) {
        var original: [String: PolicyLimiter] = [:]
        for (spec, key) in requests where original[key] == nil {
            original[key] = load(key)?.adapted(to: spec) ?? PolicyLimiter(policy: spec)
        }
        // Trial run on copies, in order, so a key listed twice sees its own earlier count.
        var trial = original
        var trialDecisions: [Decision] = []
        trialDecisions.reserveCapacity(requests.count)
        var allowed = true
        for (spec, key) in requests {
            var l = trial[key]!.adapted(to: spec)
            let d = l.decide(now: now, cost: cost)
            trial[key] = l
            trialDecisions.append(d)
            if !spec.shadow && !d.allowed { allowed = false }
        }
        if allowed {
            var writes: [String: PolicyLimiter] = [:]
            var out: [PolicyDecision] = []
            for (i, (spec, key)) in requests.enumerated() {
                let d = trialDecisions[i]
                if d.allowed { writes[key] = trial[key] }
                out.append(PolicyDecision(policy: spec, key: key, decision: d, counted: d.allowed))
            }
            return (MultiDecision(allowed: true, decisions: out), writes)
        }
        let out = requests.map { spec, key in
            PolicyDecision(policy: spec, key: key,
                           decision: original[key]!.adapted(to: spec).peek(now: now, cost: cost),
                           counted: false)
        }
        return (MultiDecision(allowed: false, decisions: out), [:])
    }
}

/// A plain value holding every key's state: the reference semantics of the rate limiter, with no
/// locking and no eviction. `InProcessRateLimitStore` and the Redis script give the same answers.
public struct RateLimitTable: Sendable, Hashable {
    public private(set) var limiters: [String: PolicyLimiter] = [:]

    public init() {}

    /// All-or-nothing check of one request against several policies (see `MultiPolicy`).
    public mutating func check(policies: [(PolicySpec, key: String)], now: Int64, cost: Int = 1) -> MultiDecision {
        let reqs = policies.map { ($0.0, $0.key) }
        let (decision, writes) = MultiPolicy.check(reqs, now: now, cost: cost) { limiters[$0] }
        for (k, v) in writes { limiters[k] = v }
        return decision
    }

    /// What `check` would decide, counting nothing: every policy's `peek`, allowed unless an
    /// enforced policy denies (the script's peek mode).
    public func peek(policies: [(PolicySpec, key: String)], now: Int64, cost: Int = 1) -> MultiDecision {
        let decisions = policies.map { spec, key in
            let state = limiters[key]?.adapted(to: spec) ?? PolicyLimiter(policy: spec)
            return PolicyDecision(policy: spec, key: key, decision: state.peek(now: now, cost: cost), counted: false)
        }
        return MultiDecision(allowed: decisions.allSatisfy { $0.policy.shadow || $0.decision.allowed }, decisions: decisions)
    }
}
