/// Mints HS256/384/512 tokens, e.g. for the gateway's `gateway token` command and for tests.
/// Only HMAC: the gateway never holds private keys.
public struct JWTSigner: Sendable {
    /// A claim value the signer can write.
    public enum ClaimValue: Sendable, Equatable {
        case string(String)
        case integer(Int)
        case number(Double)
        case bool(Bool)
        case strings([String])
        /// One JSON value (object, array, anything), written verbatim: check it with `isJSON` first.
        case json(String)

        /// Whether `text` is exactly one JSON value (RFC 8259), as the verifier would parse it.
        public static func isJSON(_ text: String) -> Bool { JSONValue.parse(Array(text.utf8)) != nil }
    }

    public let algorithm: JWTAlgorithm
    public let kid: String?
    private let secret: [UInt8]

    /// Same secret rules as `VerificationKey.hmac` (at least the hash length).
    public init(algorithm: JWTAlgorithm, secret: [UInt8], kid: String? = nil) throws(JWTError) {
        _ = try VerificationKey.hmac(kid: kid, algorithm: algorithm, secret: secret)
        self.algorithm = algorithm
        self.secret = secret
        self.kid = kid
    }

    /// Header `{"alg":…,"typ":"JWT"[,"kid":…]}`, claims in the given order → compact JWS.
    public func sign(_ claims: [(String, ClaimValue)]) -> String {
        var header = "{\"alg\":\"\(algorithm.rawValue)\",\"typ\":\"JWT\""
        if let kid {
            header += ",\"kid\":"
            JSONWriter.quote(kid, into: &header)
        }
        header += "}"
        var payload = "{"
        for (index, (name, value)) in claims.enumerated() {
            if index > 0 { payload += "," }
            JSONWriter.quote(name, into: &payload)
            payload += ":"
            switch value {
            case .string(let s): JSONWriter.quote(s, into: &payload)
            case .integer(let i): payload += String(i)
            case .number(let d): payload += d.isFinite ? "\(d)" : "null"
            case .bool(let b): payload += b ? "true" : "false"
            case .strings(let list):
                payload += "["
                for (i, s) in list.enumerated() {
                    if i > 0 { payload += "," }
                    JSONWriter.quote(s, into: &payload)
                }
                payload += "]"
            case .json(let text): payload += text
            }
        }
        payload += "}"
        let signingInput = Base64URL.encode(header.utf8) + "." + Base64URL.encode(payload.utf8)
        let mac = Array(signingInput.utf8).withUnsafeBufferPointer { input in
            HMACSHA2.mac(algorithm: algorithm, key: secret, input: input)
        }
        guard let mac else { preconditionFailure("HMAC failed for a validated key") }
        return signingInput + "." + Base64URL.encode(mac)
    }
}
