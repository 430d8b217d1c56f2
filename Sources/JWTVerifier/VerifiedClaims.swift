import Foundation

/// The claims of a token that passed verification. Small, immutable and `Sendable`, so it can ride in
/// a per-request context and sit in the verified-token cache.
///
/// Claim names are *paths*: `realm_access.roles` walks into nested objects (Keycloak puts roles
/// there). A top-level member whose name itself contains dots (OIDC namespaced claims such as
/// `https://example.com/plan`) wins over the nested reading, so such names keep working.
public struct VerifiedClaims: Sendable {
    let claims: [String: JSONValue]
    /// `exp` in seconds since 1970.
    let expiration: Double
    let notBeforeSeconds: Double?
    let issuedAtSeconds: Double?

    /// `sub` (RFC 7519 §4.1.2).
    public let subject: String?

    /// `exp` (RFC 7519 §4.1.4).
    public var expiresAt: Date { Date(timeIntervalSince1970: expiration) }
    /// `nbf`, if present.
    public var notBefore: Date? { notBeforeSeconds.map(Date.init(timeIntervalSince1970:)) }
    /// `iat`, if present.
    public var issuedAt: Date? { issuedAtSeconds.map(Date.init(timeIntervalSince1970:)) }
    /// `iss`, if it is a string.
    public var issuer: String? { claims["iss"]?.stringValue }
    /// `aud` as a list (a single string becomes one element); empty if absent.
    public var audiences: [String] { claims["aud"]?.stringsValue ?? [] }

    /// Names of all top-level claims in the token.
    public var names: [String] { Array(claims.keys) }

    /// A string claim; `nil` if absent or not a string.
    public func string(_ path: String) -> String? { value(at: path)?.stringValue }
    /// A claim that is a string or an array of strings, as a list; `nil` otherwise.
    public func strings(_ path: String) -> [String]? { value(at: path)?.stringsValue }
    /// A numeric claim; `nil` if absent or not a number.
    public func number(_ path: String) -> Double? { value(at: path)?.numberValue }
    /// A boolean claim; `nil` if absent or not a boolean.
    public func bool(_ path: String) -> Bool? {
        if case .bool(let value)? = value(at: path) { value } else { nil }
    }

    /// A scalar claim (string, number, boolean) as one value, or an array of scalars as its
    /// elements, in text form (`42`, `true`); `nil` when absent, `null`, an object, or an array
    /// holding anything else. What `require_claims` matches against and rate-limit keys read.
    public func values(_ path: String) -> [String]? {
        guard let value = value(at: path) else { return nil }
        if let text = Self.scalarText(value) { return [text] }
        guard case .array(let items) = value else { return nil }
        var texts: [String] = []
        texts.reserveCapacity(items.count)
        for item in items {
            guard let text = Self.scalarText(item) else { return nil }
            texts.append(text)
        }
        return texts
    }

    /// `values(path)` joined with commas: one text for a header or a key (`admin,barber`).
    public func text(_ path: String) -> String? {
        // A scalar (the usual key or tier claim) without a one-element list and a join.
        guard let value = value(at: path) else { return nil }
        if let text = Self.scalarText(value) { return text }
        return values(path)?.joined(separator: ",")
    }

    /// OAuth scopes: the `scope` claim (RFC 8693 §4.2: space-delimited; an array is accepted too),
    /// else `scp` (string or array, as Azure AD and Okta send it). Empty when neither is present.
    public var scopes: [String] {
        for name in ["scope", "scp"] {
            switch claims[name] {
            case .string(let text)?: return text.split(separator: " ").map(String.init)
            case .array?: if let list = claims[name]?.stringsValue { return list }
            default: continue
            }
        }
        return []
    }

    /// Checks `[claim path: allowed values]`: each claim (a scalar, or an array of scalars of which
    /// any element may match) must hold one of its allowed values. The first failing claim (in
    /// name order, so errors are stable) throws `missingClaim(name)`.
    public func require(_ requirements: [String: [String]]) throws(JWTError) {
        for name in requirements.keys.sorted() {
            guard let values = values(name), let allowed = requirements[name],
                  values.contains(where: allowed.contains) else {
                throw JWTError.missingClaim(name)
            }
        }
    }

    /// Checks the token's `scopes`: at least one of `any` (when not empty) and every one of `all`.
    /// Throws `insufficientScope` otherwise.
    public func requireScopes(any: [String], all: [String]) throws(JWTError) {
        guard !any.isEmpty || !all.isEmpty else { return }
        let granted = Set(scopes)
        if !any.isEmpty, !any.contains(where: granted.contains) {
            throw JWTError.insufficientScope.with("none of the accepted scopes granted")
        }
        if all.contains(where: { !granted.contains($0) }) {
            throw JWTError.insufficientScope.with("a required scope is not granted")
        }
    }

    /// The member at a dotted path: the whole name as a top-level member first, then the walk.
    func value(at path: String) -> JSONValue? {
        if let direct = claims[path] { return direct }
        guard path.utf8.contains(UInt8(ascii: ".")) else { return nil }
        // Walked in place (no list of segments): a tier or key claim is read on every request.
        var members = claims
        var rest = Substring(path)
        while true {
            let dot = rest.firstIndex(of: ".")
            guard let next = members[String(rest[..<(dot ?? rest.endIndex)])] else { return nil }
            guard let dot else { return next }
            guard case .object(let inner) = next else { return nil }
            members = inner
            rest = rest[rest.index(after: dot)...]
        }
    }

    private static func scalarText(_ value: JSONValue) -> String? {
        switch value {
        case .string(let text): text
        case .bool(let flag): flag ? "true" : "false"
        case .number(let number):
            number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
        default: nil
        }
    }
}
