/// Which rate-limit header vocabulary responses carry (`rate_limits.headers`).
public enum RateLimitHeaderStyle: String, Sendable, Hashable {
    /// draft-ietf-httpapi-ratelimit-headers-06 style, the SPEC default:
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`, `RateLimit-Policy: 100;w=900`.
    case draft6 = "draft-6"
    /// draft-ietf-httpapi-ratelimit-headers-10 structured fields:
    /// `RateLimit: "per_ip";r=57;t=30` and `RateLimit-Policy: "per_ip";q=100;w=900`.
    case ietfDraft10 = "ietf-draft-10"
}

/// Response header fields for a decision: a pure function, ready to append to a response.
/// Fields are `(name, value)` pairs, names as the drafts spell them or, with `lowercaseNames`,
/// lowercase (what HTTP/2 requires; the gateway sends these on both protocols).
public enum RateLimitHeaders {
    /// Fields for the tightest policy of `decision`, plus `Retry-After` when denied
    /// (RFC 9110 §10.2.3, delay-seconds; the longest wait among the denying policies).
    /// Empty when no enforced policy applies.
    public static func fields(
        for decision: MultiDecision, style: RateLimitHeaderStyle, lowercaseNames: Bool = false
    ) -> [(String, String)] {
        guard let t = decision.tightest else { return [] }
        var out = fields(policy: t.policy, decision: t.decision, style: style, retryAfter: false, lowercaseNames: lowercaseNames)
        if let retry = decision.retryAfter {
            out.append((lowercaseNames ? "retry-after" : "Retry-After", String(retry)))
        }
        return out
    }

    /// Fields for one policy's decision; `Retry-After` is added when it denies and `retryAfter`.
    public static func fields(
        policy: PolicySpec, decision: Decision, style: RateLimitHeaderStyle, retryAfter: Bool = true,
        lowercaseNames: Bool = false
    ) -> [(String, String)] {
        var out: [(String, String)] = []
        // Room for Retry-After too: one allocation whether or not it is denied.
        out.reserveCapacity(5)
        switch style {
        case .draft6:
            out.append((lowercaseNames ? "ratelimit-limit" : "RateLimit-Limit", String(decision.limit)))
            out.append((lowercaseNames ? "ratelimit-remaining" : "RateLimit-Remaining", String(decision.remaining)))
            out.append((lowercaseNames ? "ratelimit-reset" : "RateLimit-Reset", String(decision.resetAfter)))
            out.append((lowercaseNames ? "ratelimit-policy" : "RateLimit-Policy", "\(decision.limit);w=\(policy.windowSeconds)"))
        case .ietfDraft10:
            let name = sfString(policy.name)
            out.append((lowercaseNames ? "ratelimit" : "RateLimit", "\(name);r=\(decision.remaining);t=\(decision.resetAfter)"))
            out.append((lowercaseNames ? "ratelimit-policy" : "RateLimit-Policy", "\(name);q=\(decision.limit);w=\(policy.windowSeconds)"))
        }
        if retryAfter, let r = decision.retryAfter {
            out.append((lowercaseNames ? "retry-after" : "Retry-After", String(r)))
        }
        return out
    }

    /// An RFC 8941 §3.3.3 sf-string: quoted, with `"` and `\` escaped; other characters outside
    /// printable ASCII cannot be represented and are replaced by `_`.
    static func sfString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"", "\\": out += "\\" + String(u)
            case " "..."~": out.unicodeScalars.append(u)
            default: out += "_"
            }
        }
        return out + "\""
    }
}
