/// The answer of one policy for one request.
///
/// Times are kept in milliseconds (exactly what the maths and the Redis script compute) and exposed
/// in whole seconds for headers, always rounded *up* so a client that obeys them is never early.
public struct Decision: Sendable, Hashable {
    /// Whether this policy lets the request through (for a shadow policy: whether it *would*).
    public var allowed: Bool
    /// The policy's limit (requests per window).
    public var limit: Int
    /// Requests still available right now: after this request when it was counted, otherwise
    /// without it (denied requests consume nothing).
    public var remaining: Int
    /// Milliseconds until the window frees at least one more request (0 when nothing is in use).
    public var resetAfterMs: Int64
    /// Milliseconds until this request (same cost) would really pass; `nil` when allowed.
    public var retryAfterMs: Int64?

    public init(allowed: Bool, limit: Int, remaining: Int, resetAfterMs: Int64, retryAfterMs: Int64?) {
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        self.resetAfterMs = max(0, resetAfterMs)
        self.retryAfterMs = allowed ? nil : retryAfterMs.map { max(0, $0) }
    }

    /// Whole seconds until the window frees a request (`RateLimit-Reset`), ≥ 0, rounded up.
    public var resetAfter: Int { Int(ceilDiv(resetAfterMs, 1000)) }

    /// Whole seconds for `Retry-After` when denied: ≥ 1 and rounded up, so never before the
    /// moment the request would really pass (SPEC: "whole seconds, ≥ 1, not before the reset").
    public var retryAfter: Int? {
        guard let ms = retryAfterMs else { return nil }
        return max(1, Int(ceilDiv(ms, 1000)))
    }
}

/// One policy's part in a multi-policy check.
public struct PolicyDecision: Sendable, Hashable {
    public var policy: PolicySpec
    public var key: String
    public var decision: Decision
    /// Whether this request was added to the policy's window (false for every policy of a denied
    /// request, and for a shadow policy that would itself deny).
    public var counted: Bool

    public init(policy: PolicySpec, key: String, decision: Decision, counted: Bool) {
        self.policy = policy
        self.key = key
        self.decision = decision
        self.counted = counted
    }
}

/// The all-or-nothing answer for one request checked against all of its route's policies.
public struct MultiDecision: Sendable, Hashable {
    /// True unless some enforced (non-shadow) policy denies.
    public var allowed: Bool
    /// One entry per requested policy, in request order.
    public var decisions: [PolicyDecision]
    /// Index into `decisions` of the policy whose numbers go into the response headers.
    public var tightestIndex: Int?

    public init(allowed: Bool, decisions: [PolicyDecision]) {
        self.allowed = allowed
        self.decisions = decisions
        self.tightestIndex = MultiDecision.tightest(decisions, allowed: allowed)
    }

    public var tightest: PolicyDecision? { tightestIndex.map { decisions[$0] } }

    /// `Retry-After` seconds for a denied request: the longest wait among the denying policies
    /// (the request passes only once every one of them lets it through).
    public var retryAfter: Int? {
        guard !allowed else { return nil }
        return decisions.filter { !$0.policy.shadow && !$0.decision.allowed }
            .compactMap { $0.decision.retryAfter }.max()
    }

    /// SPEC "tightest policy": among enforced policies, the one with the fewest requests remaining
    /// after this one is counted; ties go to the smaller limit, then to the earlier policy.
    /// For a denied request only the denying policies compete, and the one that makes the client
    /// wait longest wins (ties: smaller limit), so the headers agree with `Retry-After`.
    /// Shadow policies never shape what a client sees.
    static func tightest(_ decisions: [PolicyDecision], allowed: Bool) -> Int? {
        var best: Int?
        for (i, d) in decisions.enumerated() where !d.policy.shadow {
            if !allowed && d.decision.allowed { continue }
            guard let b = best else { best = i; continue }
            let cur = decisions[b].decision
            let new = d.decision
            let better: Bool
            if allowed {
                better = new.remaining < cur.remaining
                    || (new.remaining == cur.remaining && new.limit < cur.limit)
            } else {
                let nw = new.retryAfterMs ?? 0, cw = cur.retryAfterMs ?? 0
                better = nw > cw || (nw == cw && new.limit < cur.limit)
            }
            if better { best = i }
        }
        return best
    }
}

@inline(__always)
func ceilDiv(_ a: Int64, _ b: Int64) -> Int64 {
    a <= 0 ? 0 : (a + b - 1) / b
}

/// Floor division and modulo that stay correct for negative timestamps.
@inline(__always)
func floorMod(_ a: Int64, _ b: Int64) -> Int64 {
    let r = a % b
    return r < 0 ? r + b : r
}
