/// A JWS in compact serialization (RFC 7515 §7.1), split and decoded but not yet verified.
struct ParsedJWS {
    let algorithm: JWTAlgorithm
    let kid: String?
    /// Length of `BASE64URL(header) '.' BASE64URL(payload)` — the signing input is the token's prefix.
    let signingInputLength: Int
    let payload: [UInt8]
    let signature: [UInt8]

    /// Header parameters this library implements. Any `crit` entry is refused because none of the
    /// registered extensions (e.g. RFC 7797 `b64`) is implemented (RFC 7515 §4.1.11 "MUST reject").
    /// `jku`, `x5u`, `jwk`, `x5c`, `x5t` may be present but are never read: keys come from the KeySet.
    static func parse(_ token: UnsafeBufferPointer<UInt8>) throws(JWTError) -> ParsedJWS {
        var firstDot = -1, secondDot = -1
        for index in 0..<token.count where token[index] == UInt8(ascii: ".") {
            if firstDot < 0 { firstDot = index }
            else if secondDot < 0 { secondDot = index }
            else { throw JWTError.malformed.with("more than three segments") }
        }
        guard firstDot > 0, secondDot > firstDot else { throw JWTError.malformed.with("not three segments") }
        guard secondDot + 1 < token.count else { throw JWTError.malformed.with("empty signature") }

        guard let headerBytes = Base64URL.decode(UnsafeBufferPointer(rebasing: token[0..<firstDot])),
              let payload = Base64URL.decode(UnsafeBufferPointer(rebasing: token[(firstDot + 1)..<secondDot])),
              let signature = Base64URL.decode(UnsafeBufferPointer(rebasing: token[(secondDot + 1)...])) else {
            throw JWTError.malformed.with("segment is not strict base64url")
        }
        guard let header = JSONValue.parse(headerBytes)?.objectValue else {
            throw JWTError.malformed.with("header is not a JSON object")
        }
        guard let algName = header["alg"]?.stringValue else { throw JWTError.malformed.with("header lacks a string alg") }
        // `none` (any case) and anything unknown fail here: JWTAlgorithm has no such case.
        guard let algorithm = JWTAlgorithm(rawValue: algName) else {
            throw JWTError.unsupportedAlgorithm.with("alg not supported")
        }
        if header["crit"] != nil {
            // RFC 7515 §4.1.11: a present `crit` must be a non-empty list of understood names; we
            // understand none, so any `crit` (even a malformed one) is refused.
            throw JWTError.malformed.with("crit names an extension this verifier does not implement")
        }
        var kid: String?
        if let member = header["kid"] {
            guard let string = member.stringValue else { throw JWTError.malformed.with("kid is not a string") }
            kid = string
        }
        return ParsedJWS(algorithm: algorithm, kid: kid, signingInputLength: secondDot,
                         payload: payload, signature: signature)
    }
}

/// A JWS whose signature verified, with no claim checks (for non-JWT payloads, e.g. RFC 8037 A.4).
public struct VerifiedJWS: Sendable {
    public let algorithm: JWTAlgorithm
    public let keyID: String?
    public let payload: [UInt8]
}

/// Reading a claim before verification, only to choose *which* verifier (issuer, keys) the token
/// goes to: nothing read here is trusted, the chosen verifier checks `iss` again after the signature.
public enum UnverifiedClaims {
    /// The payload's `iss`, or nil when the token is not three segments, the payload is not a JSON
    /// object, or `iss` is not a string.
    public static func issuer(of token: Substring) -> String? {
        var token = token
        return token.withUTF8 { bytes -> String? in
            guard let first = bytes.firstIndex(of: UInt8(ascii: ".")),
                  let second = bytes[(first + 1)...].firstIndex(of: UInt8(ascii: ".")),
                  let payload = Base64URL.decode(UnsafeBufferPointer(rebasing: bytes[(first + 1)..<second])),
                  let object = JSONValue.parse(payload)?.objectValue
            else { return nil }
            return object["iss"]?.stringValue
        }
    }
}
