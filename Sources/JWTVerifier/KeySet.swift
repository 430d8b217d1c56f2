/// An immutable snapshot of trusted keys. Built once (at config load or by a JWKS refresher) and
/// swapped whole with `JWTVerifier.replaceKeys(_:)`; verification reads it without further locking.
///
/// Key selection (RFC 7515 §4.1.4, §6): the header's `jku`, `x5u`, `jwk` and `x5c` are never
/// consulted — keys come only from this set.
/// - Token with `kid`: the key(s) with that `kid`; one pinned to the token's `alg` is used. A known
///   `kid` with a different pinned algorithm → `unsupportedAlgorithm`; an unknown `kid` → `unknownKey`.
/// - Token without `kid`: the single key pinned to the token's `alg`; none, or more than one
///   (ambiguous), → `unknownKey`.
public struct KeySet: Sendable {
    /// The loaded keys, in document order.
    public let keys: [VerificationKey]
    /// Why JWKS entries were left out (one short line each, e.g. `"key 2 (kid a1): use is enc"`).
    /// Unusable entries are skipped, not fatal, so one odd key cannot take down a whole rotation.
    public let skipped: [String]

    private let byKid: [String: [Int]]
    private let byAlgorithmWithoutKid: [JWTAlgorithm: [Int]]

    public init(keys: [VerificationKey]) {
        self.init(keys: keys, skipped: [])
    }

    init(keys: [VerificationKey], skipped: [String]) {
        self.keys = keys
        self.skipped = skipped
        var byKid = [String: [Int]]()
        var byAlgorithm = [JWTAlgorithm: [Int]]()
        for (index, key) in keys.enumerated() {
            if let kid = key.kid { byKid[kid, default: []].append(index) }
            byAlgorithm[key.algorithm, default: []].append(index)
        }
        self.byKid = byKid
        self.byAlgorithmWithoutKid = byAlgorithm
    }

    public static let empty = KeySet(keys: [])

    func select(algorithm: JWTAlgorithm, kid: String?) throws(JWTError) -> VerificationKey {
        if let kid {
            guard let candidates = byKid[kid] else { throw JWTError.unknownKey.with("no key with this kid") }
            for index in candidates where keys[index].algorithm == algorithm { return keys[index] }
            throw JWTError.unsupportedAlgorithm.with("alg differs from the key's pinned algorithm")
        }
        guard let candidates = byAlgorithmWithoutKid[algorithm], candidates.count == 1 else {
            throw JWTError.unknownKey.with("no single key for this alg and no kid")
        }
        return keys[candidates[0]]
    }
}

// MARK: - JWKS (RFC 7517)

extension KeySet {
    /// Parses a JWK Set document (`{"keys":[...]}`).
    ///
    /// Algorithm pinning for each JWK:
    /// - `alg` present: used if supported and consistent with `kty`/`crv` (else the key is skipped).
    /// - `alg` absent: EC `P-256` → ES256, `P-384` → ES384; OKP `Ed25519` → EdDSA (the curve fixes the
    ///   algorithm). RSA → `rsaAlgorithm` and oct → `hmacAlgorithm` when given, else skipped: an RSA
    ///   key could be RS* or PS* at any hash, and guessing would widen what the key accepts.
    /// - `use` other than `sig`, or `key_ops` without `verify`, → skipped. Private members are ignored.
    ///
    /// Throws `malformed` only if the document itself is not JSON with a `keys` array.
    public static func jwks<Bytes: Collection>(
        json: Bytes,
        rsaAlgorithm: JWTAlgorithm? = nil,
        hmacAlgorithm: JWTAlgorithm? = nil
    ) throws(JWTError) -> KeySet where Bytes.Element == UInt8 {
        guard let document = JSONValue.parse(Array(json))?.objectValue,
              let entries = document["keys"]?.arrayValue else {
            throw JWTError.malformed.with("JWKS is not an object with a keys array")
        }
        var keys = [VerificationKey]()
        var skipped = [String]()
        for (index, entry) in entries.enumerated() {
            let kid = entry.objectValue?["kid"]?.stringValue
            do {
                keys.append(try jwk(entry, rsaAlgorithm: rsaAlgorithm, hmacAlgorithm: hmacAlgorithm))
            } catch {
                let label = kid.map { "key \(index) (kid \($0))" } ?? "key \(index)"
                skipped.append("\(label): \(error.detail.isEmpty ? error.category : error.detail)")
            }
        }
        return KeySet(keys: keys, skipped: skipped)
    }

    /// Parses one JWK object into a pinned key (see `jwks(json:rsaAlgorithm:hmacAlgorithm:)`).
    static func jwk(_ value: JSONValue, rsaAlgorithm: JWTAlgorithm?, hmacAlgorithm: JWTAlgorithm?) throws(JWTError) -> VerificationKey {
        guard let jwk = value.objectValue, let kty = jwk["kty"]?.stringValue else {
            throw JWTError.invalidKey.with("not a JWK object with kty")
        }
        var kid: String?
        if let member = jwk["kid"] {
            guard let string = member.stringValue else { throw JWTError.invalidKey.with("kid is not a string") }
            kid = string
        }
        if let use = jwk["use"] {
            guard use.stringValue == "sig" else { throw JWTError.invalidKey.with("use is not sig") }
        }
        if let ops = jwk["key_ops"] {
            guard let list = ops.stringsValue, list.contains("verify") else {
                throw JWTError.invalidKey.with("key_ops lacks verify")
            }
        }
        var declared: JWTAlgorithm?
        if let member = jwk["alg"] {
            guard let name = member.stringValue, let algorithm = JWTAlgorithm(rawValue: name) else {
                throw JWTError.invalidKey.with("unsupported alg")
            }
            declared = algorithm
        }
        func bytes(_ name: String) throws(JWTError) -> [UInt8] {
            guard let text = jwk[name]?.stringValue, let decoded = Base64URL.decode(text) else {
                throw JWTError.invalidKey.with("missing or bad base64url member \(name)")
            }
            return decoded
        }

        switch kty {
        case "RSA":
            guard let algorithm = declared ?? rsaAlgorithm else {
                throw JWTError.invalidKey.with("RSA key without alg and no default RSA algorithm configured")
            }
            guard algorithm.family == .rsaPKCS1 || algorithm.family == .rsaPSS else {
                throw JWTError.invalidKey.with("alg does not fit kty RSA")
            }
            return try VerificationKey.pinned(
                kid: kid, algorithm: algorithm,
                key: PublicKey.rsa(modulus: bytes("n"), exponent: bytes("e")))
        case "EC":
            let curve = jwk["crv"]?.stringValue
            let inferred: JWTAlgorithm? = switch curve {
            case "P-256": .es256
            case "P-384": .es384
            default: nil
            }
            guard let inferred else { throw JWTError.invalidKey.with("unsupported EC curve") }
            guard declared == nil || declared == inferred else { throw JWTError.invalidKey.with("alg does not fit crv") }
            return try VerificationKey.pinned(
                kid: kid, algorithm: inferred,
                key: PublicKey.ec(
                    algorithmGroup: PublicKey.group(for: inferred)!, coordinateBytes: inferred.digestBytes,
                    x: bytes("x"), y: bytes("y")))
        case "OKP":
            guard jwk["crv"]?.stringValue == "Ed25519" else { throw JWTError.invalidKey.with("unsupported OKP curve") }
            guard declared == nil || declared == .edDSA else { throw JWTError.invalidKey.with("alg does not fit crv") }
            return try VerificationKey.pinned(kid: kid, algorithm: .edDSA, key: PublicKey.ed25519(x: bytes("x")))
        case "oct":
            guard let algorithm = declared ?? hmacAlgorithm else {
                throw JWTError.invalidKey.with("oct key without alg and no default HMAC algorithm configured")
            }
            return try VerificationKey.hmac(kid: kid, algorithm: algorithm, secret: bytes("k"))
        default:
            throw JWTError.invalidKey.with("unsupported kty")
        }
    }
}
