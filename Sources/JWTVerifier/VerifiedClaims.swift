import Foundation

/// The claims of a token that passed verification. Small, immutable and `Sendable`, so it can ride in
/// a per-request context and sit in the verified-token cache.
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

    /// Names of all claims in the token.
    public var names: [String] { Array(claims.keys) }

    /// A string claim; `nil` if absent or not a string.
    public func string(_ name: String) -> String? { claims[name]?.stringValue }
    /// A claim that is a string or an array of strings, as a list; `nil` otherwise.
    public func strings(_ name: String) -> [String]? { claims[name]?.stringsValue }
    /// A numeric claim; `nil` if absent or not a number.
    public func number(_ name: String) -> Double? { claims[name]?.numberValue }
    /// A boolean claim; `nil` if absent or not a boolean.
    public func bool(_ name: String) -> Bool? {
        if case .bool(let value)? = claims[name] { value } else { nil }
    }

    /// Checks `[claim: allowed values]`: each claim must be a string or array of strings sharing at
    /// least one value with its list. The first failing claim (in name order, so errors are stable)
    /// throws `missingClaim(name)`.
    public func require(_ requirements: [String: [String]]) throws(JWTError) {
        for name in requirements.keys.sorted() {
            guard let values = strings(name), let allowed = requirements[name],
                  values.contains(where: allowed.contains) else {
                throw JWTError.missingClaim(name)
            }
        }
    }
}
