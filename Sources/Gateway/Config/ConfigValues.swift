/// Value syntaxes used in `gateway.yaml`: secrets, `host:port`, CIDRs, CORS origins, durations and
/// sizes. Each parser returns `nil` (or a reason) instead of throwing so the YAML walker can turn
/// the failure into a `path: reason` error and keep going.

// MARK: - Secret

/// A secret string (JWT HMAC key, Redis password). Printing, interpolating or dumping it shows
/// `<redacted>`; only `.value` reveals it, so it cannot leak into logs or `/config` by accident.
public struct ConfigSecret: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    public let value: String

    public init(_ value: String) { self.value = value }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }
}

// MARK: - host:port

/// A `host:port` pair: `0.0.0.0:8443`, `[::1]:9901`, `localhost:3001`. `host` holds no brackets.
public struct HostPort: Sendable, Equatable, Hashable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Parses `host:port` / `[v6]:port`; `allowedPorts` is `0...65535` for listen addresses (0 picks a
    /// free port, which tests use) and `1...65535` for upstream endpoints.
    static func parse(_ text: String, allowedPorts: ClosedRange<Int>) -> HostPort? {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
            guard IPNetwork.parseIPv6(host) != nil else { return nil }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            guard !host.contains(":") else { return nil }  // bare IPv6 needs brackets
            guard IPNetwork.parseIPv4(host) != nil || isValidHostname(host) else { return nil }
        }
        guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy(\.isASCIIDigit),
              let port = Int(portText), allowedPorts.contains(port) else { return nil }
        return HostPort(host: String(host).lowercased(), port: port)
    }
}

// MARK: - CIDR

/// An IPv4 or IPv6 network in CIDR notation. A bare address is a single host (`/32`, `/128`).
public struct IPNetwork: Sendable, Equatable, Hashable, CustomStringConvertible {
    /// Network address bytes: 4 for IPv4, 16 for IPv6; host bits are zero.
    public let address: [UInt8]
    public let prefixLength: Int

    public var isIPv6: Bool { address.count == 16 }

    /// Whether `bytes` (4 or 16 bytes, same family) falls inside this network.
    public func contains(_ bytes: [UInt8]) -> Bool {
        guard bytes.count == address.count else { return false }
        var remaining = prefixLength
        for i in 0..<address.count where remaining > 0 {
            let bits = min(8, remaining)
            let mask: UInt8 = bits == 8 ? 0xFF : ~(0xFF >> UInt8(bits))
            if bytes[i] & mask != address[i] { return false }
            remaining -= bits
        }
        return true
    }

    public var description: String {
        if !isIPv6 {
            return address.map(String.init).joined(separator: ".") + "/\(prefixLength)"
        }
        var groups: [String] = []
        for i in stride(from: 0, to: 16, by: 2) {
            groups.append(String(UInt16(address[i]) << 8 | UInt16(address[i + 1]), radix: 16))
        }
        return groups.joined(separator: ":") + "/\(prefixLength)"
    }

    enum ParseError: Error, Equatable {
        case syntax
        case prefixOutOfRange(max: Int)
        case hostBitsSet(suggestion: String)
    }

    static func parse(_ text: String) -> Result<IPNetwork, ParseError> {
        let addressText: Substring
        var prefix: Int?
        if let slash = text.firstIndex(of: "/") {
            addressText = text[..<slash]
            let prefixText = text[text.index(after: slash)...]
            guard !prefixText.isEmpty, prefixText.count <= 3, prefixText.allSatisfy(\.isASCIIDigit),
                  let value = Int(prefixText) else { return .failure(.syntax) }
            prefix = value
        } else {
            addressText = text[...]
        }
        guard let bytes = parseIPv4(addressText) ?? parseIPv6(addressText) else { return .failure(.syntax) }
        let maxPrefix = bytes.count * 8
        let length = prefix ?? maxPrefix
        guard length <= maxPrefix else { return .failure(.prefixOutOfRange(max: maxPrefix)) }
        let network = IPNetwork(masking: bytes, prefixLength: length)
        if network.address != bytes {
            return .failure(.hostBitsSet(suggestion: network.description))
        }
        return .success(network)
    }

    init(masking bytes: [UInt8], prefixLength: Int) {
        var masked = bytes
        var remaining = prefixLength
        for i in 0..<masked.count {
            let bits = max(0, min(8, remaining))
            let mask: UInt8 = bits == 8 ? 0xFF : (bits == 0 ? 0 : ~(0xFF >> UInt8(bits)))
            masked[i] &= mask
            remaining -= 8
        }
        self.address = masked
        self.prefixLength = prefixLength
    }

    /// Strict dotted quad: four decimal octets 0...255, no leading zeros (which some stacks read as octal).
    static func parseIPv4(_ text: Substring) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCIIDigit),
                  part.count == 1 || part.first != "0",
                  let value = Int(part), value <= 255 else { return nil }
            bytes.append(UInt8(value))
        }
        return bytes
    }

    /// RFC 4291 §2.2 text forms, including `::` compression and a trailing dotted IPv4 part.
    static func parseIPv6(_ text: Substring) -> [UInt8]? {
        guard text.contains(":") else { return nil }
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }

        func groups(_ part: String, allowIPv4Tail: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            var result: [UInt16] = []
            for (index, piece) in pieces.enumerated() {
                if allowIPv4Tail, index == pieces.count - 1, piece.contains(".") {
                    guard let v4 = parseIPv4(piece) else { return nil }
                    result.append(UInt16(v4[0]) << 8 | UInt16(v4[1]))
                    result.append(UInt16(v4[2]) << 8 | UInt16(v4[3]))
                    continue
                }
                guard !piece.isEmpty, piece.count <= 4, piece.allSatisfy(\.isHexDigit),
                      let value = UInt16(piece, radix: 16) else { return nil }
                result.append(value)
            }
            return result
        }

        var all: [UInt16]
        if halves.count == 2 {
            guard let head = groups(halves[0], allowIPv4Tail: false),
                  let tail = groups(halves[1], allowIPv4Tail: true),
                  head.count + tail.count <= 7 else { return nil }
            all = head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        } else {
            guard let only = groups(halves[0], allowIPv4Tail: true), only.count == 8 else { return nil }
            all = only
        }
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }
}

// MARK: - CORS origin

/// An allowed CORS origin (Fetch standard "serialized origin": `scheme://host[:port]`, no path).
public enum CORSOrigin: Sendable, Equatable, CustomStringConvertible {
    /// `*`: any origin (not allowed together with `allow_credentials: true`, Fetch §3.2.5).
    case any
    /// Lowercased `scheme://host[:port]`.
    case exact(String)
    /// `scheme://*.domain[:port]`: any subdomain of `domain` (not `domain` itself).
    case wildcard(scheme: String, domain: String, port: Int?)

    public var description: String {
        switch self {
        case .any: "*"
        case .exact(let origin): origin
        case .wildcard(let scheme, let domain, let port):
            "\(scheme)://*.\(domain)" + (port.map { ":\($0)" } ?? "")
        }
    }

    public func matches(_ origin: String) -> Bool {
        switch self {
        case .any:
            return true
        case .exact(let allowed):
            return origin.lowercased() == allowed
        case .wildcard(let scheme, let domain, let port):
            let lower = origin.lowercased()
            let prefix = "\(scheme)://"
            guard lower.hasPrefix(prefix) else { return false }
            var rest = lower.dropFirst(prefix.count)
            if let port {
                let suffix = ":\(port)"
                guard rest.hasSuffix(suffix) else { return false }
                rest = rest.dropLast(suffix.count)
            } else if rest.contains(":") {
                return false
            }
            let dotted = "." + domain
            return rest.count > dotted.count && rest.hasSuffix(dotted) && isValidHostname(rest)
        }
    }

    static func parse(_ text: String) -> Result<CORSOrigin, InvalidValue> {
        if text == "*" { return .success(.any) }
        // The opaque origin of sandboxed frames and `file:` pages; allowed only when listed.
        if text == "null" { return .success(.exact("null")) }
        let usage = "expected an origin like https://example.com[:port], https://*.example.com or *"
        guard let schemeEnd = text.range(of: "://") else { return .failure(InvalidValue("\(usage), got '\(text)'")) }
        let scheme = text[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else {
            return .failure(InvalidValue("origin scheme must be http or https, got '\(text)'"))
        }
        var rest = text[schemeEnd.upperBound...]
        if rest.hasSuffix("/") {
            let trimmed = text.dropLast()
            return .failure(InvalidValue("an origin has no path, got '\(text)' (did you mean '\(trimmed)'?)"))
        }
        guard !rest.contains("/"), !rest.contains("?"), !rest.contains("#"), !rest.contains("@") else {
            return .failure(InvalidValue("an origin has no path, query or userinfo, got '\(text)'"))
        }
        var port: Int?
        if let colon = rest.lastIndex(of: ":") {
            let portText = rest[rest.index(after: colon)...]
            guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy(\.isASCIIDigit),
                  let value = Int(portText), (1...65535).contains(value) else {
                return .failure(InvalidValue("\(usage), got '\(text)' (bad port)"))
            }
            port = value
            rest = rest[..<colon]
        }
        let host = rest.lowercased()
        if host.hasPrefix("*.") {
            let domain = String(host.dropFirst(2))
            guard isValidHostname(domain[...]), !domain.contains("*") else {
                return .failure(InvalidValue("\(usage), got '\(text)'"))
            }
            return .success(.wildcard(scheme: scheme, domain: domain, port: port))
        }
        guard isValidHostname(host[...]) || IPNetwork.parseIPv4(host[...]) != nil else {
            return .failure(InvalidValue("\(usage), got '\(text)'"))
        }
        return .success(.exact("\(scheme)://\(host)" + (port.map { ":\($0)" } ?? "")))
    }
}

/// Why a value was rejected, phrased for a `path: reason` line.
struct InvalidValue: Error, Equatable {
    let reason: String
    init(_ reason: String) { self.reason = reason }
}

// MARK: - Small syntaxes

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens, 1–63 chars, no edge hyphens.
func isValidHostname(_ text: Substring) -> Bool {
    guard !text.isEmpty, text.utf8.count <= 253 else { return false }
    let labels = text.split(separator: ".", omittingEmptySubsequences: false)
    // An all-numeric last label is no host name (RFC 3696 §2): `300.1.1.1` is a bad IPv4 address.
    if let last = labels.last, last.allSatisfy(\.isASCIIDigit) { return false }
    return labels.allSatisfy { label in
        !label.isEmpty && label.utf8.count <= 63 && label.first != "-" && label.last != "-"
            && label.unicodeScalars.allSatisfy { $0.isASCIILetterOrDigit || $0 == "-" }
    }
}

/// RFC 9110 §5.6.2 `token` (header names, methods).
func isHTTPToken(_ text: String) -> Bool {
    !text.isEmpty && text.utf8.allSatisfy(isHTTPTokenByte)
}

/// RFC 9110 §5.6.2 `tchar`. Names are checked byte by byte on every field of every head: one
/// table load and compare per byte (the bit tests this replaced took twice the instructions).
@inline(__always)
func isHTTPTokenByte(_ byte: UInt8) -> Bool {
    // "1" at each ASCII byte that is a tchar: `!#$%&'*+-.^_`|~`, digits and letters
    // (`FieldNameTests.tokenBytes` checks it against the RFC's list). A literal, so no lazy global.
    let table: StaticString = "00000000000000000000000000000000010111110011011011111111110000000111111111111111111111111110001111111111111111111111111111101010"
    return byte < 128 && table.utf8Start[Int(byte)] == UInt8(ascii: "1")
}

extension Unicode.Scalar {
    var isASCIILetterOrDigit: Bool {
        ("a"..."z").contains(self) || ("A"..."Z").contains(self) || ("0"..."9").contains(self)
    }
}

extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}

enum ConfigSyntax {
    /// `20ms`, `30s`, `15m`, `2h`, `7d`: a non-negative integer and a unit.
    static func duration(_ text: String) -> Duration? {
        let digits = text.prefix { $0.isASCIIDigit }
        let unit = text.dropFirst(digits.count)
        guard !digits.isEmpty, digits.count <= 12, let value = Int64(digits) else { return nil }
        switch unit {
        case "ms": return .milliseconds(value)
        case "s": return .seconds(value)
        case "m": return .seconds(value * 60)
        case "h": return .seconds(value * 3600)
        case "d": return .seconds(value * 86_400)
        default: return nil
        }
    }

    /// `16KiB`, `10MiB`, `1GiB`, `64KB`, `1MB`, `512B` or a plain number of bytes.
    static func size(_ text: String) -> Int? {
        let digits = text.prefix { $0.isASCIIDigit }
        let unit = text.dropFirst(digits.count)
        guard !digits.isEmpty, digits.count <= 15, let value = Int(digits) else { return nil }
        let multiplier: Int
        switch unit {
        case "", "B": multiplier = 1
        case "KiB": multiplier = 1 << 10
        case "MiB": multiplier = 1 << 20
        case "GiB": multiplier = 1 << 30
        case "KB": multiplier = 1_000
        case "MB": multiplier = 1_000_000
        case "GB": multiplier = 1_000_000_000
        default: return nil
        }
        let (result, overflow) = value.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : result
    }

    /// Renders a duration the way the file spells it (for error messages).
    static func format(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        if attoseconds == 0 {
            if seconds != 0, seconds % 86_400 == 0 { return "\(seconds / 86_400)d" }
            if seconds != 0, seconds % 3600 == 0 { return "\(seconds / 3600)h" }
            if seconds != 0, seconds % 60 == 0 { return "\(seconds / 60)m" }
            return "\(seconds)s"
        }
        return "\(seconds * 1000 + attoseconds / 1_000_000_000_000_000)ms"
    }
}

/// The closest candidate to a misspelt name: Levenshtein distance ≤ 2, else a prefix match.
func closestMatch(to word: String, in candidates: [String]) -> String? {
    var best: (String, Int)?
    for candidate in candidates {
        let distance = levenshtein(word, candidate)
        if distance <= 2, distance < (best?.1 ?? .max) { best = (candidate, distance) }
    }
    if let best { return best.0 }
    guard word.count >= 2 else { return nil }
    return candidates.first { $0.hasPrefix(word) || word.hasPrefix($0) }
}

func levenshtein(_ a: String, _ b: String) -> Int {
    let a = Array(a.unicodeScalars), b = Array(b.unicodeScalars)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = Array(repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
