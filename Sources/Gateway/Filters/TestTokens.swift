import Foundation
import JWTVerifier

/// What `gateway token` was asked for.
public struct TestTokenRequest: Sendable {
    /// HMAC secret; `nil` → the first HS256 key of the config's `jwt` section.
    public var secret: String?
    public var subject: String
    public var role: String?
    /// A duration like `1h` (`gateway.yaml` syntax).
    public var ttl: String
    /// `nil` → the config key's kid when the secret came from the config, else no `kid` header
    /// (the gateway then picks its single HS256 key).
    public var kid: String?
    /// `nil` → the config's `jwt.issuer`, else `barberpro-auth`.
    public var issuer: String?
    /// `nil` → the config's first `jwt.audiences` entry, else `barberpro-api`.
    public var audience: String?
    /// `PATH=VALUE` (`--claim`): a dotted path nests objects (`realm_access.roles=["admin"]`); VALUE
    /// is taken as JSON when it parses as JSON, else as a string. Replaces a standard claim of the
    /// same name (so `exp=1` mints an expired token).
    public var claims: [String] = []
    /// `--scope`, joined with spaces into `scope` (RFC 8693 §4.2).
    public var scopes: [String] = []

    public init(secret: String?, subject: String, role: String? = nil, ttl: String = "1h", kid: String? = nil,
                issuer: String? = nil, audience: String? = nil) {
        self.secret = secret
        self.subject = subject
        self.role = role
        self.ttl = ttl
        self.kid = kid
        self.issuer = issuer
        self.audience = audience
    }
}

public struct TestTokenError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Mints HS256 test tokens for testers (`gateway token`, SPEC "Command line"). The gateway never
/// holds private keys, so only HMAC tokens can be minted.
public enum TestTokens {
    public static let defaultIssuer = "barberpro-auth"
    public static let defaultAudience = "barberpro-api"

    public static func mint(_ request: TestTokenRequest, config: JWTConfig? = nil, now: Date = Date()) throws(TestTokenError) -> String {
        guard !request.subject.isEmpty else { throw TestTokenError("--sub must not be empty") }
        guard let ttl = ConfigSyntax.duration(request.ttl), ttl >= .seconds(1) else {
            throw TestTokenError("--ttl: expected a duration like 15m, 1h or 7d, got '\(request.ttl)'")
        }
        var secret = request.secret
        var kid = request.kid
        // With `jwt.providers`, the first provider holding an HS256 key stands for the section.
        let provider = config?.identity.providers.first { $0.keys.contains { $0.algorithm == .hs256 } }
        if secret == nil {
            let configKey = (provider?.keys ?? config?.keys ?? []).first { $0.algorithm == .hs256 }
            guard let configKey, case .secret(let configured) = configKey.material else {
                throw TestTokenError("--secret is required (or --config with an HS256 key under jwt.keys)")
            }
            secret = configured.value
            kid = kid ?? configKey.kid
        }
        let bytes = Array((secret ?? "").utf8)
        let needed = Authenticator.minimumSecretBytes(.hs256)
        guard bytes.count >= needed else {
            // Never echo the secret itself.
            throw TestTokenError("the secret must be at least \(needed) bytes for HS256 (RFC 7518 §3.2), this one has \(bytes.count)")
        }
        let signer: JWTSigner
        do {
            signer = try JWTSigner(algorithm: .hs256, secret: bytes, kid: kid)
        } catch {
            throw TestTokenError("unusable secret (\(error.category))")
        }
        let issuedAt = Int(now.timeIntervalSince1970)
        var claims: [(String, JWTSigner.ClaimValue)] = [
            ("iss", .string(request.issuer ?? provider?.issuer ?? config?.issuer ?? defaultIssuer)),
            ("aud", .string(request.audience ?? provider?.audiences.first ?? config?.audiences.first ?? defaultAudience)),
            ("sub", .string(request.subject)),
        ]
        if let role = request.role { claims.append(("role", .string(role))) }
        claims.append(("iat", .integer(issuedAt)))
        claims.append(("exp", .integer(issuedAt + Int(ttl.components.seconds))))
        if !request.scopes.isEmpty { claims.append(("scope", .string(request.scopes.joined(separator: " ")))) }
        for (name, value) in try extraClaims(request.claims) {
            claims.removeAll { $0.0 == name }
            claims.append((name, .json(value)))
        }
        return signer.sign(claims)
    }

    /// A claim tree under construction: a leaf is JSON text, an inner node an object in order.
    private indirect enum ClaimNode {
        case leaf(String)
        case object([(String, ClaimNode)])

        var json: String {
            switch self {
            case .leaf(let text): return text
            case .object(let members):
                return "{" + members.map { Self.quoted($0.0) + ":" + $0.1.json }.joined(separator: ",") + "}"
            }
        }

        static func quoted(_ text: String) -> String {
            var out = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
                default: out.unicodeScalars.append(scalar)
                }
            }
            return out + "\""
        }

        /// Sets `value` at `path`; false when the path runs through a leaf or ends on an object.
        mutating func insert(_ path: ArraySlice<String>, _ value: String) -> Bool {
            guard case .object(var members) = self, let head = path.first else { return false }
            let index = members.firstIndex { $0.0 == head }
            if path.count == 1 {
                guard index == nil else { return false }
                members.append((head, .leaf(value)))
            } else {
                var child = index.map { members[$0].1 } ?? .object([])
                guard child.insert(path.dropFirst(), value) else { return false }
                if let index { members[index].1 = child } else { members.append((head, child)) }
            }
            self = .object(members)
            return true
        }
    }

    /// `--claim` arguments as top-level (name, JSON text) pairs, in first-mention order.
    private static func extraClaims(_ arguments: [String]) throws(TestTokenError) -> [(String, String)] {
        var root = ClaimNode.object([])
        for argument in arguments {
            guard let equals = argument.firstIndex(of: "=") else {
                throw TestTokenError("--claim: expected PATH=VALUE, got '\(argument)'")
            }
            let path = argument[..<equals].split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard !path.contains(where: \.isEmpty) else { throw TestTokenError("--claim: empty segment in '\(argument[..<equals])'") }
            let raw = String(argument[argument.index(after: equals)...])
            let value = JWTSigner.ClaimValue.isJSON(raw) ? raw : ClaimNode.quoted(raw)
            guard root.insert(path[...], value) else {
                throw TestTokenError("--claim: '\(argument[..<equals])' conflicts with another --claim")
            }
        }
        guard case .object(let members) = root else { return [] }
        return members.map { ($0.0, $0.1.json) }
    }
}
