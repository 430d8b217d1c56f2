/// The JWS algorithms this verifier accepts (RFC 7518 §3.1, RFC 8037 §3.1).
///
/// `none` is deliberately absent: a token whose `alg` is `none` in any letter case never parses into
/// a `JWTAlgorithm`, so it can never be matched to a key.
public enum JWTAlgorithm: String, Sendable, Hashable, CaseIterable {
    case hs256 = "HS256", hs384 = "HS384", hs512 = "HS512"
    case rs256 = "RS256", rs384 = "RS384", rs512 = "RS512"
    case ps256 = "PS256", ps384 = "PS384", ps512 = "PS512"
    case es256 = "ES256", es384 = "ES384"
    case edDSA = "EdDSA"

    enum Family { case hmac, rsaPKCS1, rsaPSS, ecdsa, eddsa }

    var family: Family {
        switch self {
        case .hs256, .hs384, .hs512: .hmac
        case .rs256, .rs384, .rs512: .rsaPKCS1
        case .ps256, .ps384, .ps512: .rsaPSS
        case .es256, .es384: .ecdsa
        case .edDSA: .eddsa
        }
    }

    /// Digest size in bytes for the SHA-2 member used (0 for EdDSA, which hashes internally).
    var digestBytes: Int {
        switch self {
        case .hs256, .rs256, .ps256, .es256: 32
        case .hs384, .rs384, .ps384, .es384: 48
        case .hs512, .rs512, .ps512: 64
        case .edDSA: 0
        }
    }
}
