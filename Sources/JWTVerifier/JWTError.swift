/// Why a token (or a key) was refused.
///
/// A struct over a private enum with static constants (STYLE habit 6), so new cases can be added
/// without breaking callers. Two errors compare equal when their kind and claim name match; the
/// `detail` text is for logs only and is ignored by `==`.
///
/// Neither `category` nor `detail` ever contains any part of the token: `category` is a short stable
/// string meant for the HTTP `error_description`; `detail` names which rule failed.
public struct JWTError: Error, Sendable, Hashable, CustomStringConvertible {
    private enum Kind: String, Sendable, Hashable {
        case malformed
        case unsupportedAlgorithm = "unsupported_algorithm"
        case unknownKey = "unknown_key"
        case badSignature = "bad_signature"
        case expired
        case notYetValid = "not_yet_valid"
        case wrongIssuer = "wrong_issuer"
        case wrongAudience = "wrong_audience"
        case lifetimeTooLong = "lifetime_too_long"
        case missingClaim = "missing_claim"
        case insufficientScope = "insufficient_scope"
        case invalidKey = "invalid_key"
    }

    private let kind: Kind
    /// The claim a `missingClaim` error is about (a configured name, never a token value).
    public let claim: String?
    /// A fixed sentence naming the rule that failed, for logs. Never contains token bytes.
    public let detail: String

    private init(_ kind: Kind, claim: String? = nil, detail: String = "") {
        self.kind = kind
        self.claim = claim
        self.detail = detail
    }

    /// Not a well-formed JWS compact token: segments, base64url, JSON, claim types, size, `crit`.
    public static let malformed = JWTError(.malformed)
    /// `alg` is unknown, is `none`, or is not the algorithm the selected key is pinned to.
    public static let unsupportedAlgorithm = JWTError(.unsupportedAlgorithm)
    /// No key matches the token's `kid` (or, without `kid`, no single key is pinned to its `alg`).
    public static let unknownKey = JWTError(.unknownKey)
    /// The signature does not verify with the selected key.
    public static let badSignature = JWTError(.badSignature)
    /// `exp` has passed (beyond the leeway).
    public static let expired = JWTError(.expired)
    /// `nbf` is in the future, or `iat` is in the future (beyond the leeway).
    public static let notYetValid = JWTError(.notYetValid)
    /// `iss` is missing or differs from the configured issuer.
    public static let wrongIssuer = JWTError(.wrongIssuer)
    /// `aud` is missing or shares no value with the configured audiences.
    public static let wrongAudience = JWTError(.wrongAudience)
    /// `exp - iat` (or `exp - now` without `iat`) exceeds the configured maximum lifetime.
    public static let lifetimeTooLong = JWTError(.lifetimeTooLong)
    /// A key could not be loaded (bad PEM/JWK, wrong type for its algorithm, too small).
    public static let invalidKey = JWTError(.invalidKey)
    /// The token's `scope` (or `scp`) lacks the scopes a route requires.
    public static let insufficientScope = JWTError(.insufficientScope)
    /// A required claim is absent, or has none of the allowed values.
    public static func missingClaim(_ name: String) -> JWTError { JWTError(.missingClaim, claim: name) }

    /// Same kind, with a log detail attached.
    func with(_ detail: String) -> JWTError { JWTError(kind, claim: claim, detail: detail) }

    /// Short stable machine string for the HTTP `error_description` (e.g. `"expired"`).
    public var category: String { kind.rawValue }

    public var description: String {
        var text = "JWTError.\(kind.rawValue)"
        if let claim { text += "(\(claim))" }
        if !detail.isEmpty { text += ": \(detail)" }
        return text
    }

    public static func == (lhs: JWTError, rhs: JWTError) -> Bool {
        lhs.kind == rhs.kind && lhs.claim == rhs.claim
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(kind)
        hasher.combine(claim)
    }
}
