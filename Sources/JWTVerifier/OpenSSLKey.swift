private import COpenSSL

/// Digests fetched once from the default provider. Passing a fetched `EVP_MD` to
/// `EVP_DigestVerifyInit` skips the implicit per-call fetch that `EVP_sha256()` costs in OpenSSL 3.
private final class FetchedDigests: @unchecked Sendable {  // immutable after init; EVP_MD is refcounted and thread-safe
    let sha256: OpaquePointer
    let sha384: OpaquePointer
    let sha512: OpaquePointer

    static let shared = FetchedDigests()

    private init() {
        guard let sha256 = EVP_MD_fetch(nil, "SHA256", nil),
              let sha384 = EVP_MD_fetch(nil, "SHA384", nil),
              let sha512 = EVP_MD_fetch(nil, "SHA512", nil) else {
            fatalError("OpenSSL default provider lacks SHA-2")
        }
        self.sha256 = sha256
        self.sha384 = sha384
        self.sha512 = sha512
    }

    func digest(bytes: Int) -> OpaquePointer? {
        switch bytes {
        case 32: sha256
        case 48: sha384
        case 64: sha512
        default: nil
        }
    }
}

/// A NUL-terminated C view of a static string, valid for the life of the process.
private func cString(_ string: StaticString) -> UnsafePointer<CChar> {
    UnsafeRawPointer(string.utf8Start).assumingMemoryBound(to: CChar.self)
}

/// The OpenSSL error queue is per thread and shared with TLS on the same event loop (C-INTEROP-NOTES
/// pitfall 5): clear it before each call and after a failure so nothing leaks into `SSL_get_error`.
@inline(__always)
private func withCleanErrorQueue<T>(_ body: () throws(JWTError) -> T) throws(JWTError) -> T {
    ERR_clear_error()
    defer { ERR_clear_error() }
    return try body()
}

/// An immutable parsed public key (`EVP_PKEY*`), loaded once and shared by all verifying threads.
/// OpenSSL 3 allows concurrent verify operations on one `EVP_PKEY` as long as nobody mutates it,
/// and nothing here does after init — hence `@unchecked Sendable`.
final class PublicKey: @unchecked Sendable {
    enum Kind: Equatable, Sendable {
        case rsa(bits: Int)
        case ec(group: String)
        case ed25519
    }

    private let pkey: OpaquePointer
    let kind: Kind

    private init(taking pkey: OpaquePointer) throws(JWTError) {
        self.pkey = pkey
        switch EVP_PKEY_get_base_id(pkey) {
        case EVP_PKEY_RSA:
            kind = .rsa(bits: Int(EVP_PKEY_get_bits(pkey)))
        case EVP_PKEY_EC:
            var name = [CChar](repeating: 0, count: 64)
            var length = 0
            guard EVP_PKEY_get_group_name(pkey, &name, name.count, &length) == 1 else {
                EVP_PKEY_free(pkey)
                throw JWTError.invalidKey.with("EC key without a named group")
            }
            kind = .ec(group: String(decoding: name.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self))
            // Reject points not on the curve (invalid-curve attacks); cheap, done once at load.
            let check = EVP_PKEY_CTX_new_from_pkey(nil, pkey, nil)
            defer { EVP_PKEY_CTX_free(check) }
            guard check != nil, EVP_PKEY_public_check(check) == 1 else {
                EVP_PKEY_free(pkey)
                throw JWTError.invalidKey.with("EC public point fails validation")
            }
        case EVP_PKEY_ED25519:
            kind = .ed25519
        default:
            EVP_PKEY_free(pkey)
            throw JWTError.invalidKey.with("unsupported public key type")
        }
    }

    deinit { EVP_PKEY_free(pkey) }

    /// Whether this key may be pinned to `algorithm` (RFC 7518 §3.3–3.5, RFC 8037 §3.1).
    /// RSA keys below 2048 bits are refused (RFC 7518 §3.3 "MUST").
    func supports(_ algorithm: JWTAlgorithm) -> Bool {
        switch (kind, algorithm.family) {
        case (.rsa(let bits), .rsaPKCS1), (.rsa(let bits), .rsaPSS): bits >= 2048
        case (.ec(let group), .ecdsa): Self.group(for: algorithm).map { $0.description } == group
        case (.ed25519, .eddsa): true
        default: false
        }
    }

    static func group(for algorithm: JWTAlgorithm) -> StaticString? {
        switch algorithm {
        case .es256: "prime256v1"
        case .es384: "secp384r1"
        default: nil
        }
    }

    // MARK: Loading

    /// Loads the first PEM block of `pem`: `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1) or
    /// `CERTIFICATE` (X.509, its subject public key; the certificate itself is not validated —
    /// trust comes from configuration, not from a chain). Private keys are refused.
    static func fromPEM(_ pem: String) throws(JWTError) -> PublicKey {
        try withCleanErrorQueue { () throws(JWTError) -> PublicKey in
            var text = pem
            let block: (String, [UInt8])? = text.withUTF8 { utf8 in
                guard let bio = BIO_new_mem_buf(utf8.baseAddress, Int32(utf8.count)) else { return nil }
                defer { BIO_free(bio) }
                var name: UnsafeMutablePointer<CChar>?
                var header: UnsafeMutablePointer<CChar>?
                var data: UnsafeMutablePointer<UInt8>?
                var length = 0
                guard PEM_read_bio(bio, &name, &header, &data, &length) == 1, let name, let data else { return nil }
                defer {
                    gw_OPENSSL_free(name)
                    gw_OPENSSL_free(header)
                    gw_OPENSSL_free(data)
                }
                return (String(cString: name), Array(UnsafeBufferPointer(start: data, count: length)))
            }
            guard let (label, der) = block else { throw JWTError.invalidKey.with("no PEM block") }
            let pkey: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
                var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
                let end = buffer.baseAddress.map { $0 + buffer.count }
                let key: OpaquePointer?
                switch label {
                case "PUBLIC KEY":
                    key = d2i_PUBKEY(nil, &cursor, buffer.count)
                case "RSA PUBLIC KEY":
                    key = d2i_PublicKey(EVP_PKEY_RSA, nil, &cursor, buffer.count)
                case "CERTIFICATE":
                    guard let cert = d2i_X509(nil, &cursor, buffer.count) else { return nil }
                    defer { X509_free(cert) }
                    key = X509_get_pubkey(cert)
                default:
                    return nil
                }
                // Trailing bytes after the DER structure mean a confused or tampered file.
                if let key, cursor != end { EVP_PKEY_free(key); return nil }
                return key
            }
            guard let pkey else { throw JWTError.invalidKey.with("PEM is not a supported public key or certificate") }
            return try PublicKey(taking: pkey)
        }
    }

    /// RSA public key from JWK `n` and `e` (RFC 7518 §6.3.1), via `OSSL_PARAM_BLD` + `EVP_PKEY_fromdata`.
    static func rsa(modulus: [UInt8], exponent: [UInt8]) throws(JWTError) -> PublicKey {
        try withCleanErrorQueue { () throws(JWTError) -> PublicKey in
            guard !modulus.isEmpty, !exponent.isEmpty, exponent.count <= 8 else {
                throw JWTError.invalidKey.with("bad RSA n/e")
            }
            guard let n = BN_bin2bn(modulus, Int32(modulus.count), nil) else { throw JWTError.invalidKey }
            defer { BN_free(n) }
            guard let e = BN_bin2bn(exponent, Int32(exponent.count), nil) else { throw JWTError.invalidKey }
            defer { BN_free(e) }
            return try fromData(type: "RSA") { builder in
                OSSL_PARAM_BLD_push_BN(builder, cString("n"), n) == 1 && OSSL_PARAM_BLD_push_BN(builder, cString("e"), e) == 1
            }
        }
    }

    /// EC public key from JWK `crv`, `x`, `y` (RFC 7518 §6.2.1); coordinates must be full field length.
    static func ec(algorithmGroup group: StaticString, coordinateBytes: Int, x: [UInt8], y: [UInt8]) throws(JWTError) -> PublicKey {
        try withCleanErrorQueue { () throws(JWTError) -> PublicKey in
            guard x.count == coordinateBytes, y.count == coordinateBytes else {
                throw JWTError.invalidKey.with("EC coordinate length")
            }
            let point = [0x04] + x + y  // SEC 1 uncompressed point
            // OSSL_PARAM_BLD keeps the pointers until OSSL_PARAM_BLD_to_param, so `point` must stay
            // pinned across the whole build (fromData runs push and to_param inside this scope).
            let result = point.withUnsafeBytes { pointBytes in
                Result { () throws(JWTError) -> PublicKey in
                    try fromData(type: "EC") { builder in
                        OSSL_PARAM_BLD_push_utf8_string(builder, cString("group"), cString(group), 0) == 1
                            && OSSL_PARAM_BLD_push_octet_string(builder, cString("pub"), pointBytes.baseAddress, pointBytes.count) == 1
                    }
                }
            }
            return try result.get()
        }
    }

    /// Ed25519 public key from JWK `x` (RFC 8037 §2).
    static func ed25519(x: [UInt8]) throws(JWTError) -> PublicKey {
        try withCleanErrorQueue { () throws(JWTError) -> PublicKey in
            guard x.count == 32, let pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, x, 32) else {
                throw JWTError.invalidKey.with("bad Ed25519 x")
            }
            return try PublicKey(taking: pkey)
        }
    }

    /// `type` and all parameter names are static strings: OpenSSL stores these pointers (the
    /// EVP_PKEY_CTX keeps `keytype`, OSSL_PARAM keeps `key`) instead of copying them, so a Swift
    /// temporary C string would dangle.
    private static func fromData(type: StaticString, _ push: (OpaquePointer) -> Bool) throws(JWTError) -> PublicKey {
        guard let builder = OSSL_PARAM_BLD_new() else { throw JWTError.invalidKey }
        defer { OSSL_PARAM_BLD_free(builder) }
        guard push(builder), let params = OSSL_PARAM_BLD_to_param(builder) else {
            throw JWTError.invalidKey.with("cannot build key parameters")
        }
        defer { OSSL_PARAM_free(params) }
        guard let context = EVP_PKEY_CTX_new_from_name(nil, cString(type), nil) else { throw JWTError.invalidKey }
        defer { EVP_PKEY_CTX_free(context) }
        var pkey: OpaquePointer?
        guard EVP_PKEY_fromdata_init(context) == 1,
              EVP_PKEY_fromdata(context, &pkey, gw_EVP_PKEY_PUBLIC_KEY(), params) == 1,
              let pkey else {
            throw JWTError.invalidKey.with("OpenSSL refused the key components")
        }
        return try PublicKey(taking: pkey)
    }

    // MARK: Verifying

    /// Verifies `signature` over `signingInput` with `algorithm`. The caller has already checked
    /// `supports(algorithm)`. Returns false for any failure, including malformed signatures.
    func verify(algorithm: JWTAlgorithm, signingInput: UnsafeBufferPointer<UInt8>, signature: [UInt8]) -> Bool {
        ERR_clear_error()
        defer { ERR_clear_error() }
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        var keyContext: OpaquePointer?
        let md = algorithm == .edDSA ? nil : FetchedDigests.shared.digest(bytes: algorithm.digestBytes)
        // EdDSA is "pure": no digest, one-shot EVP_DigestVerify only (RFC 8032).
        guard EVP_DigestVerifyInit(context, &keyContext, md, nil, pkey) == 1 else { return false }

        var signatureBytes = signature
        switch algorithm.family {
        case .rsaPSS:
            // RFC 7518 §3.5: MGF1 with the same hash, salt length = hash length.
            guard let keyContext,
                  EVP_PKEY_CTX_set_rsa_padding(keyContext, RSA_PKCS1_PSS_PADDING) == 1,
                  EVP_PKEY_CTX_set_rsa_pss_saltlen(keyContext, RSA_PSS_SALTLEN_DIGEST) == 1,
                  EVP_PKEY_CTX_set_rsa_mgf1_md(keyContext, md) == 1 else { return false }
        case .rsaPKCS1:
            guard let keyContext, EVP_PKEY_CTX_set_rsa_padding(keyContext, RSA_PKCS1_PADDING) == 1 else { return false }
        case .ecdsa:
            // RFC 7518 §3.4: JWS carries R||S, each exactly the coordinate size; OpenSSL wants DER.
            guard signature.count == 2 * algorithm.digestBytes,
                  let der = Self.derSignature(rawRS: signature) else { return false }
            signatureBytes = der
        case .eddsa:
            guard signature.count == 64 else { return false }
        case .hmac:
            return false
        }
        let result = signatureBytes.withUnsafeBufferPointer { sig in
            EVP_DigestVerify(context, sig.baseAddress, sig.count, signingInput.baseAddress, signingInput.count)
        }
        return result == 1
    }

    private static func derSignature(rawRS: [UInt8]) -> [UInt8]? {
        let half = rawRS.count / 2
        guard let ecdsaSig = ECDSA_SIG_new() else { return nil }
        defer { ECDSA_SIG_free(ecdsaSig) }
        let r = rawRS.withUnsafeBufferPointer { BN_bin2bn($0.baseAddress, Int32(half), nil) }
        let s = rawRS.withUnsafeBufferPointer { BN_bin2bn($0.baseAddress! + half, Int32(half), nil) }
        guard let r, let s else { BN_free(r); BN_free(s); return nil }
        guard ECDSA_SIG_set0(ecdsaSig, r, s) == 1 else { BN_free(r); BN_free(s); return nil }  // set0 owns r, s on success
        var out: UnsafeMutablePointer<UInt8>?
        let length = i2d_ECDSA_SIG(ecdsaSig, &out)
        guard length > 0, let out else { return nil }
        defer { gw_OPENSSL_free(out) }
        return Array(UnsafeBufferPointer(start: out, count: Int(length)))
    }
}

/// HMAC-SHA2 helpers (RFC 7518 §3.2).
enum HMACSHA2 {
    static func mac(algorithm: JWTAlgorithm, key: [UInt8], input: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        ERR_clear_error()
        defer { ERR_clear_error() }
        let md: OpaquePointer? = switch algorithm {
        case .hs256: EVP_sha256()
        case .hs384: EVP_sha384()
        case .hs512: EVP_sha512()
        default: nil
        }
        guard let md else { return nil }
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var outLength: UInt32 = 0
        let ok = key.withUnsafeBufferPointer { keyBuffer in
            HMAC(md, keyBuffer.baseAddress, Int32(keyBuffer.count), input.baseAddress, input.count, &out, &outLength) != nil
        }
        guard ok else { return nil }
        return Array(out.prefix(Int(outLength)))
    }

    /// Constant-time comparison (`CRYPTO_memcmp`) so timing does not reveal how many bytes matched.
    static func verify(algorithm: JWTAlgorithm, key: [UInt8], input: UnsafeBufferPointer<UInt8>, signature: [UInt8]) -> Bool {
        guard signature.count == algorithm.digestBytes,
              let expected = mac(algorithm: algorithm, key: key, input: input) else { return false }
        return expected.withUnsafeBytes { a in
            signature.withUnsafeBytes { b in CRYPTO_memcmp(a.baseAddress, b.baseAddress, a.count) == 0 }
        }
    }
}

/// SHA-256 of a byte string (cache keys).
enum SHA256Digest {
    /// Computed into four words on the stack: no allocation per token (the cache key of every
    /// request that carries one).
    static func hash(_ bytes: UnsafeBufferPointer<UInt8>) -> TokenDigest {
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        let ok = withUnsafeMutableBytes(of: &words) { out in
            gw_sha256(bytes.baseAddress, bytes.count, out.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        precondition(ok == 1, "SHA-256 failed")
        return TokenDigest(a: words.0, b: words.1, c: words.2, d: words.3)
    }
}

/// 256-bit digest as four words: cheap to hash and compare as a dictionary key.
struct TokenDigest: Hashable, Sendable {
    let a: UInt64, b: UInt64, c: UInt64, d: UInt64
}
