import NIOHTTP1

/// One `match.headers` or `match.cookies` condition, with its regex compiled at config load.
struct RequestCondition: @unchecked Sendable {
    // @unchecked: `Regex` is immutable after compilation but not declared Sendable for every output.
    enum Test {
        case exact(String)
        case prefix(String)
        case present
        case absent
        case regex(Regex<AnyRegexOutput>)
    }

    let name: String
    let isCookie: Bool
    let test: Test

    /// `nil` only for a pattern the config check would have refused.
    init?(_ condition: FieldCondition, isCookie: Bool) {
        self.name = condition.name
        self.isCookie = isCookie
        switch condition.test {
        case .exact(let value): self.test = .exact(value)
        case .prefix(let value): self.test = .prefix(value)
        case .present: self.test = .present
        case .absent: self.test = .absent
        case .regex(let pattern):
            guard let regex = try? Regex(pattern) else { return nil }
            self.test = .regex(regex)
        }
    }

    /// A header condition holds when any one of the field's values satisfies it (a repeated field
    /// is not joined, so `exact` compares whole field values); a cookie condition looks at the
    /// first cookie of that name.
    func matches(_ headers: HeadFields) -> Bool {
        if self.isCookie {
            let value = Self.cookie(named: self.name, in: headers)
            switch self.test {
            case .present: return value != nil
            case .absent: return value == nil
            default: return value.map(self.valueMatches) ?? false
            }
        }
        switch self.test {
        case .present: return headers.contains(name: self.name)
        case .absent: return !headers.contains(name: self.name)
        default:
            for value in headers[self.name] where self.valueMatches(Substring(value)) { return true }
            return false
        }
    }

    private func valueMatches(_ value: Substring) -> Bool {
        switch self.test {
        case .exact(let expected): value == expected
        case .prefix(let prefix): value.hasPrefix(prefix)
        case .regex(let regex): (try? regex.wholeMatch(in: value)) != nil
        case .present, .absent: true
        }
    }

    /// The value of the first cookie called `name` across every `Cookie` field (HTTP/2 may split
    /// them, RFC 9113 §8.2.3). Names compare case-sensitively, as browsers send them (RFC 6265).
    static func cookie(named name: String, in headers: HeadFields) -> Substring? {
        for value in headers["cookie"] {
            for pair in value.split(separator: ";") {
                let trimmed = pair.drop { $0 == " " || $0 == "\t" }
                guard let equals = trimmed.firstIndex(of: "=") else { continue }
                if trimmed[..<equals] == name {
                    var cookie = trimmed[trimmed.index(after: equals)...]
                    while cookie.last == " " || cookie.last == "\t" { cookie = cookie.dropLast() }
                    if cookie.count >= 2, cookie.first == "\"", cookie.last == "\"" { cookie = cookie.dropFirst().dropLast() }
                    return cookie
                }
            }
        }
        return nil
    }
}

extension Route {
    /// A route's `match.headers` then `match.cookies`, compiled.
    static func conditions(_ match: RouteMatch) -> [RequestCondition] {
        match.headers.compactMap { RequestCondition($0, isCookie: false) }
            + match.cookies.compactMap { RequestCondition($0, isCookie: true) }
    }
}
