/// One key the verifier trusts, pinned to exactly one algorithm.
///
/// Pinning is what defeats algorithm confusion: the token's `alg` header only selects among keys;
/// it never changes how a key is used. An RSA public key pinned to RS256 can never be used as an
/// HMAC secret, because HMAC keys are a different `VerificationKey` kind and the construction
/// functions refuse a key whose type does not fit its algorithm.
public struct VerificationKey: Sendable {
    enum Material: Sendable {
        case hmac([UInt8])
        case publicKey(PublicKey)
    }

    /// The `kid` this key answers to, if any.
    public let kid: String?
    /// The only algorithm this key verifies.
    public let algorithm: JWTAlgorithm
    let material: Material

    private init(kid: String?, algorithm: JWTAlgorithm, material: Material) {
        self.kid = kid
        self.algorithm = algorithm
        self.material = material
    }

    /// An HMAC secret for HS256/384/512. RFC 7518 §3.2 requires a key at least as long as the hash
    /// output (32/48/64 bytes), and shorter secrets are refused with `invalidKey`.
    public static func hmac(kid: String? = nil, algorithm: JWTAlgorithm, secret: [UInt8]) throws(JWTError) -> VerificationKey {
        guard algorithm.family == .hmac else { throw JWTError.invalidKey.with("HMAC secret needs an HS* algorithm") }
        guard secret.count >= algorithm.digestBytes else {
            throw JWTError.invalidKey.with("HMAC secret shorter than the hash output (RFC 7518 §3.2)")
        }
        return VerificationKey(kid: kid, algorithm: algorithm, material: .hmac(secret))
    }

    /// A public key from PEM: `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1) or an X.509
    /// `CERTIFICATE` (only its public key is used; no chain or date validation). The key type must fit
    /// `algorithm` (RSA ≥ 2048 bits for RS*/PS*, P-256 for ES256, P-384 for ES384, Ed25519 for EdDSA).
    public static func publicKey(kid: String? = nil, algorithm: JWTAlgorithm, pem: String) throws(JWTError) -> VerificationKey {
        guard algorithm.family != .hmac else { throw JWTError.invalidKey.with("HS* algorithms need a secret, not a public key") }
        return try pinned(kid: kid, algorithm: algorithm, key: PublicKey.fromPEM(pem))
    }

    static func pinned(kid: String?, algorithm: JWTAlgorithm, key: PublicKey) throws(JWTError) -> VerificationKey {
        guard key.supports(algorithm) else {
            throw JWTError.invalidKey.with("key type or size does not fit \(algorithm.rawValue)")
        }
        return VerificationKey(kid: kid, algorithm: algorithm, material: .publicKey(key))
    }

    /// Verifies `signature` over the JWS signing input (`header.payload` ASCII bytes).
    func verify(signingInput: UnsafeBufferPointer<UInt8>, signature: [UInt8]) -> Bool {
        switch material {
        case .hmac(let secret):
            HMACSHA2.verify(algorithm: algorithm, key: secret, input: signingInput, signature: signature)
        case .publicKey(let key):
            key.verify(algorithm: algorithm, signingInput: signingInput, signature: signature)
        }
    }
}
