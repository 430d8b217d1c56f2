#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a policy's key is built from (config `key: client_ip | jwt_subject | claim:PATH | header:NAME
/// | route`, and a tiered policy's tier).
public enum KeyPartKind: Sendable, Hashable {
    case clientIP
    case jwtSubject
    /// A verified token's claim, by dotted path (`claim:sub` keys exactly like `jwt_subject`).
    case claim(String)
    /// Header name, lower-cased.
    case header(String)
    case route
    /// The tier a tiered policy picked: tiers count apart, so a window never mixes two limits.
    case tier

    /// Parses a config value such as `client_ip` or `header:X-Api-Key`.
    public init?(configValue: String) {
        switch configValue {
        case "client_ip": self = .clientIP
        case "jwt_subject": self = .jwtSubject
        case "route": self = .route
        default:
            if configValue.hasPrefix("claim:") {
                let path = configValue.dropFirst("claim:".count)
                guard !path.isEmpty else { return nil }
                self = .claim(String(path))
                return
            }
            guard configValue.hasPrefix("header:") else { return nil }
            let name = configValue.dropFirst("header:".count)
            guard !name.isEmpty else { return nil }
            self = .header(name.lowercased())
        }
    }

    /// Parts that name a client go inside the Redis Cluster hash tag.
    var isClientIdentity: Bool {
        switch self {
        case .route, .tier: false
        default: true
        }
    }
}

/// One resolved part of a key: its kind plus the request's value for it.
public struct KeyPart: Sendable, Hashable {
    public var kind: KeyPartKind
    public var value: String

    public init(kind: KeyPartKind, value: String) {
        self.kind = kind
        self.value = value
    }

    public static func clientIP(_ ip: String) -> KeyPart { KeyPart(kind: .clientIP, value: ip) }
    public static func jwtSubject(_ sub: String) -> KeyPart { KeyPart(kind: .jwtSubject, value: sub) }
    public static func claim(_ path: String, _ value: String) -> KeyPart { KeyPart(kind: .claim(path), value: value) }
    public static func tier(_ name: String) -> KeyPart { KeyPart(kind: .tier, value: name) }
    public static func header(_ name: String, _ value: String) -> KeyPart { KeyPart(kind: .header(name.lowercased()), value: value) }
    public static func route(_ name: String) -> KeyPart { KeyPart(kind: .route, value: name) }
}

/// Storage keys: `gw:rl:{<client-part>}:<policy>[:<other parts>...]`.
///
/// The `{...}` is a Redis Cluster hash tag (only the text between the first `{` and the next `}`
/// is hashed), and it holds the client identity, so all policies keyed by the same client land in
/// one slot and one EVALSHA may touch them all (multi-key scripts must stay within one slot).
/// The in-process store shards by the same tag. Client parts:
/// `ip:203.0.113.7`, `ip:2001:db8:1:2::/64` (IPv6 truncated to the policy's prefix; IPv4-mapped
/// IPv6 becomes IPv4), `sub:<subject>` (`jwt_subject` and `claim:sub`), `c:<path>:<value>` (other
/// claims), `h:<name>:<value>`; other parts: `route:<name>`, `tier:<name>`.
/// Free text is percent-encoded outside `[A-Za-z0-9._~-]`, so no value can contain `{`, `}` or
/// `:` and two different part lists never produce the same key.
public enum RateLimitKey {
    public static let prefix = "gw:rl:"

    /// Builds the key, or nil when a client IP part does not parse as an IP address.
    /// The first client-identity part (client IP, JWT subject or header) goes in the hash tag;
    /// the remaining parts follow the policy name in order. With no identity part the first part
    /// is the tag; with no parts at all the tag is `global`.
    public static func make(policy: PolicySpec, parts: [KeyPart]) -> String? {
        if parts.count == 1 { return make(policy: policy, part: parts[0]) }
        let tagIndex = parts.firstIndex { $0.kind.isClientIdentity } ?? (parts.isEmpty ? nil : 0)
        let tag: String
        if let tagIndex {
            guard let encoded = encode(parts[tagIndex], ipv6Prefix: policy.ipv6Prefix) else { return nil }
            tag = encoded
        } else {
            tag = "global"
        }
        let name = escape(policy.name)
        // Sized once (the other parts' values plus room for their labels): built piecewise, a key
        // of a few parts reallocated at every append. No list of encoded parts is kept.
        var key = ""
        key.reserveCapacity(prefix.utf8.count + tag.utf8.count + name.utf8.count + 3
            + parts.reduce(0) { $0 + $1.value.utf8.count + 8 })
        key += prefix
        key += "{"
        key += tag
        key += "}:"
        key += name
        for (i, part) in parts.enumerated() where i != tagIndex {
            guard let encoded = encode(part, ipv6Prefix: policy.ipv6Prefix) else { return nil }
            key += ":"
            key += encoded
        }
        return key
    }

    /// `make` for a policy of one part (`key: client_ip`, the common one), optionally followed by
    /// one more (a tiered policy's tier): the first part is the tag, and no list of parts is built.
    public static func make(policy: PolicySpec, part: KeyPart, then next: KeyPart? = nil) -> String? {
        // A canonical IPv4 client (nearly every one) is written into the key as it came: its
        // `ip:` tag made apart was a heap string of its own once the address passed 12 characters.
        let ipv4 = part.kind == .clientIP && IPAddress.isCanonicalIPv4(part.value)
        var tag = ""
        if !ipv4 {
            guard let encoded = encode(part, ipv6Prefix: policy.ipv6Prefix) else { return nil }
            tag = encoded
        }
        var rest: String? = nil
        if let next {
            guard let encoded = encode(next, ipv6Prefix: policy.ipv6Prefix) else { return nil }
            rest = encoded
        }
        let name = escape(policy.name)
        let tagLength = ipv4 ? Self.ipv4TagPrefix.utf8.count + part.value.utf8.count : tag.utf8.count
        var key = ""
        key.reserveCapacity(prefix.utf8.count + tagLength + name.utf8.count + 4 + (rest?.utf8.count ?? 0))
        key += prefix
        key += "{"
        if ipv4 {
            key += Self.ipv4TagPrefix
            key += part.value
        } else {
            key += tag
        }
        key += "}:"
        key += name
        if let rest {
            key += ":"
            key += rest
        }
        return key
    }

    /// The hash-tag text of a key (what Redis Cluster hashes), or the whole key when it has none.
    /// Found by bytes, as Redis Cluster does (`RedisClusterSlots.slot`), not by `Character`s: a
    /// Character search runs grapheme breaking over the key on every request.
    public static func hashTag(of key: String) -> Substring {
        let bytes = key.utf8
        guard let open = bytes.firstIndex(of: UInt8(ascii: "{")) else { return key[...] }
        let start = bytes.index(after: open)
        guard let close = bytes[start...].firstIndex(of: UInt8(ascii: "}")), close > start else { return key[...] }
        return key[start..<close]
    }

    private static let ipv4TagPrefix = "ip:"

    static func encode(_ part: KeyPart, ipv6Prefix: Int) -> String? {
        switch part.kind {
        case .clientIP:
            // Dotted-quad IPv4 in canonical form (what the gateway's peers nearly always are)
            // is its own identity: no `inet_pton` round trip and no copies.
            if IPAddress.isCanonicalIPv4(part.value) { return ipv4TagPrefix + part.value }
            guard let ip = IPAddress(parsing: part.value) else { return nil }
            return "ip:" + ip.clientIdentity(ipv6Prefix: ipv6Prefix)
        case .jwtSubject, .claim("sub"): return "sub:" + escape(part.value)
        case .claim(let path): return "c:" + escape(path) + ":" + escape(part.value)
        case .tier: return "tier:" + escape(part.value)
        case .header(let name): return "h:" + escape(name.lowercased()) + ":" + escape(part.value)
        case .route: return "route:" + escape(part.value)
        }
    }

    static func escape(_ s: String) -> String {
        // Most values (addresses aside, which are not escaped) need no escaping: no copy then.
        if s.utf8.allSatisfy(isUnreserved) { return s }
        var out = ""
        out.reserveCapacity(s.utf8.count)
        let hex = Array("0123456789ABCDEF".utf8)
        for b in s.utf8 {
            if isUnreserved(b) {
                out.unicodeScalars.append(Unicode.Scalar(b))
            } else {
                out += "%" + String(decoding: [hex[Int(b >> 4)], hex[Int(b & 0xF)]], as: UTF8.self)
            }
        }
        return out
    }

    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"),
             UInt8(ascii: "~"), UInt8(ascii: "-"):
            true
        default: false
        }
    }
}

/// A parsed client IP address (parsed with `inet_pton`).
public enum IPAddress: Sendable, Hashable {
    case v4(UInt8, UInt8, UInt8, UInt8)
    case v6([UInt8])  // 16 bytes

    /// Accepts `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]` and `fe80::1%eth0` (zone dropped).
    /// IPv4-mapped IPv6 (`::ffff:203.0.113.7`) becomes the IPv4 address it carries.
    public init?(parsing text: String) {
        var s = Substring(text)
        if s.hasPrefix("["), s.hasSuffix("]") { s = s.dropFirst().dropLast() }
        if let pct = s.firstIndex(of: "%") { s = s[..<pct] }
        guard !s.isEmpty, s.utf8.count <= 45 else { return nil }
        let str = String(s)
        var a4 = in_addr()
        if inet_pton(AF_INET, str, &a4) == 1 {
            let b = withUnsafeBytes(of: &a4) { Array($0) }
            self = .v4(b[0], b[1], b[2], b[3])
            return
        }
        var a6 = in6_addr()
        guard inet_pton(AF_INET6, str, &a6) == 1 else { return nil }
        let b = withUnsafeBytes(of: &a6) { Array($0.prefix(16)) }
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xFF && b[11] == 0xFF {
            self = .v4(b[12], b[13], b[14], b[15])
        } else {
            self = .v6(b)
        }
    }

    /// Whether `text` is four decimal octets 0–255 without leading zeros, the form `inet_pton`
    /// accepts and `clientIdentity` prints back unchanged.
    static func isCanonicalIPv4(_ text: String) -> Bool {
        var octets = 0
        var value = 0
        var digits = 0
        for byte in text.utf8 {
            if byte == UInt8(ascii: ".") {
                guard digits > 0, octets < 3 else { return false }
                octets += 1
                value = 0
                digits = 0
                continue
            }
            // A digit after a leading 0 ("01") is not canonical.
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9"), digits == 0 || value != 0 else { return false }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
            digits += 1
            guard value <= 255 else { return false }
        }
        return octets == 3 && digits > 0
    }

    /// The text that identifies the client: IPv4 as-is; IPv6 with the bits past `ipv6Prefix`
    /// cleared, in RFC 5952 form (via `inet_ntop`), plus `/prefix`.
    public func clientIdentity(ipv6Prefix: Int) -> String {
        switch self {
        case let .v4(a, b, c, d):
            return "\(a).\(b).\(c).\(d)"
        case .v6(var bytes):
            let prefix = max(0, min(128, ipv6Prefix))
            for i in 0..<16 {
                let keep = max(0, min(8, prefix - i * 8))
                bytes[i] &= keep == 8 ? 0xFF : ~(0xFF >> UInt8(keep))
            }
            var a6 = in6_addr()
            withUnsafeMutableBytes(of: &a6) { raw in
                for i in 0..<16 { raw[i] = bytes[i] }
            }
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            let text = buf.withUnsafeMutableBufferPointer { p -> String in
                guard inet_ntop(AF_INET6, &a6, p.baseAddress, socklen_t(p.count)) != nil else { return "" }
                return String(cString: p.baseAddress!)
            }
            return text + "/\(prefix)"
        }
    }
}
