import Foundation
import NIOHTTP1

/// The HTTP caching rules of a shared cache (RFC 9111) as this gateway applies them: which
/// requests may be answered from the cache, which responses may be stored and for how long, and
/// how a request becomes a key.
enum CachePolicy {
    /// Statuses a shared cache may store when the response gives an explicit lifetime.
    static let storableStatuses: Set<UInt> = [200, 203, 204, 300, 301, 308, 404, 410]

    /// The part of the key every request carries: method, host, path and the query with its
    /// parameters sorted (so `?a=1&b=2` and `?b=2&a=1` share an entry), plus the verified subject
    /// under `key_by: claim:sub`. Nil when the request must not be answered from or stored in a
    /// shared cache.
    static func baseKey(
        method: HTTPMethod, host: String?, uri: String, headers: HeadFields, hasBody: Bool,
        keyBy: RouteCacheConfig.KeyBy, subject: String?
    ) -> String? {
        guard method == .GET || method == .HEAD, !hasBody else { return nil }
        var partition = ""
        switch keyBy {
        case .shared:
            // A credentialed request may get a per-user answer: never share it (RFC 9111 §3.5).
            if headers.contains(name: "authorization") { return nil }
        case .claimSub:
            guard let subject, !subject.isEmpty else { return nil }
            partition = "\u{1}sub=" + subject
        }
        if Self.directives(headers[canonicalForm: "cache-control"]).contains(where: { $0.name == "no-store" }) { return nil }
        let (path, query) = Self.split(uri)
        // As routing sees it: lowercased, without port, so every listener shares the entry.
        let normalizedHost = RouteTable.normalizeHost(host)
        return method.rawValue + " " + normalizedHost + " " + path + "?" + Self.normalizedQuery(query) + partition
    }

    /// The path of a key built by `baseKey` (purge by prefix matches it).
    static func path(ofKey key: String) -> Substring {
        let afterMethod = key.drop { $0 != " " }.dropFirst()
        let afterHost = afterMethod.drop { $0 != " " }.dropFirst()
        return afterHost.prefix { $0 != "?" }
    }

    static func split(_ uri: String) -> (path: Substring, query: Substring) {
        let withoutFragment = uri.prefix { $0 != "#" }
        guard let mark = withoutFragment.firstIndex(of: "?") else { return (withoutFragment, "") }
        return (withoutFragment[..<mark], withoutFragment[withoutFragment.index(after: mark)...])
    }

    /// Parameters sorted, empty ones dropped; values stay as sent (no percent-decoding: `%2F`
    /// and `/` may mean different things to the upstream).
    static func normalizedQuery(_ query: Substring) -> String {
        query.split(separator: "&", omittingEmptySubsequences: true).sorted().joined(separator: "&")
    }

    /// The secondary key part from the request fields a stored response varies on.
    static func varyPart(_ names: [String], request: HeadFields) -> String {
        var part = ""
        for name in names {
            part += "\u{0}" + name + "=" + request[name].joined(separator: ",")
        }
        return part
    }

    /// How long a response may be served and on what terms; nil when it must not be stored.
    struct Freshness: Equatable {
        var lifetime: Int
        /// The age the response already had when it arrived (its `Age` field).
        var initialAge: Int
        var staleWhileRevalidate: Int = 0
        var staleIfError: Int = 0
        /// Lowercased request field names from `Vary`.
        var vary: [String] = []
    }

    static func freshness(status: UInt, headers: HTTPHeaders, now: Date = Date()) -> Freshness? {
        guard Self.storableStatuses.contains(status) else { return nil }
        // A cookie set for one client must never reach another.
        if headers.contains(name: "set-cookie") { return nil }
        var vary: [String] = []
        for value in headers[canonicalForm: "vary"] {
            let name = value.trimmingCharacters(in: .whitespaces).lowercased()
            if name == "*" { return nil }
            if !name.isEmpty, !vary.contains(name) { vary.append(name) }
        }
        vary.sort()
        var maxAge: Int?
        var sharedMaxAge: Int?
        var swr = 0
        var sie = 0
        for directive in Self.directives(headers[canonicalForm: "cache-control"]) {
            switch directive.name {
            case "private", "no-store", "no-cache": return nil
            case "s-maxage": sharedMaxAge = directive.seconds
            case "max-age": maxAge = directive.seconds
            case "stale-while-revalidate": swr = directive.seconds ?? 0
            case "stale-if-error": sie = directive.seconds ?? 0
            default: break
            }
        }
        var lifetime = sharedMaxAge ?? maxAge
        if lifetime == nil, let expires = headers.first(name: "expires") {
            // An unparseable Expires means "already expired" (RFC 9111 §5.3).
            guard let expiry = Self.httpDate(expires) else { return nil }
            let origin = headers.first(name: "date").flatMap(Self.httpDate) ?? now
            lifetime = Int(expiry.timeIntervalSince(origin).rounded(.down))
        }
        let initialAge = headers.first(name: "age").flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } ?? 0
        guard let lifetime, lifetime - initialAge > 0 || swr > 0 || sie > 0 else { return nil }
        return Freshness(lifetime: lifetime, initialAge: max(0, initialAge), staleWhileRevalidate: swr, staleIfError: sie, vary: vary)
    }

    struct Directive {
        var name: Substring
        var value: Substring?
        /// A delta-seconds value; nil when missing or not a number.
        var seconds: Int? { self.value.flatMap { Int($0) }.map { max(0, $0) } }
    }

    static func directives<S: StringProtocol>(_ values: [S]) -> [Directive] {
        var out: [Directive] = []
        for value in values {
            for item in value.split(separator: ",") {
                let trimmed = item.trimmingCharacters(in: .whitespaces)
                guard !trimmed.isEmpty else { continue }
                let parts = trimmed.split(separator: "=", maxSplits: 1)
                let name = Substring(parts[0].lowercased())
                var argument = parts.count > 1 ? parts[1] : nil
                if let quoted = argument, quoted.hasPrefix("\""), quoted.hasSuffix("\""), quoted.count >= 2 {
                    argument = quoted.dropFirst().dropLast()
                }
                out.append(Directive(name: name, value: argument))
            }
        }
        return out
    }

    private static let dateFormatter: DateFormatter = {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return formatter
    }()

    /// IMF-fixdate, the only form a sender may generate (RFC 9110 §5.6.7).
    static func httpDate(_ text: String) -> Date? {
        return Self.dateFormatter.date(from: text.trimmingCharacters(in: .whitespaces))
    }
}
