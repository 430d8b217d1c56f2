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
public enum RateLimitHeaders {
    /// Fields for the tightest policy of `decision`, plus `Retry-After` when denied
    /// (RFC 9110 §10.2.3, delay-seconds; the longest wait among the denying policies).
    /// Empty when no enforced policy applies.
    public static func fields(for decision: MultiDecision, style: RateLimitHeaderStyle) -> [(name: String, value: String)] {
        guard let t = decision.tightest else { return [] }
        var out = fields(policy: t.policy, decision: t.decision, style: style, retryAfter: false)
        if let retry = decision.retryAfter {
            out.append((name: "Retry-After", value: String(retry)))
        }
        return out
    }

    /// Fields for one policy's decision; `Retry-After` is added when it denies and `retryAfter`.
    public static func fields(
        policy: PolicySpec, decision: Decision, style: RateLimitHeaderStyle, retryAfter: Bool = true
    ) -> [(name: String, value: String)] {
        var out: [(name: String, value: String)]
        switch style {
        case .draft6:
            out = [
                ("RateLimit-Limit", String(decision.limit)),
                ("RateLimit-Remaining", String(decision.remaining)),
                ("RateLimit-Reset", String(decision.resetAfter)),
                ("RateLimit-Policy", "\(decision.limit);w=\(policy.windowSeconds)"),
            ]
        case .ietfDraft10:
            let name = sfString(policy.name)
            out = [
                ("RateLimit", "\(name);r=\(decision.remaining);t=\(decision.resetAfter)"),
                ("RateLimit-Policy", "\(name);q=\(decision.limit);w=\(policy.windowSeconds)"),
            ]
        }
        if retryAfter, let r = decision.retryAfter {
            out.append(("Retry-After", String(r)))
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
