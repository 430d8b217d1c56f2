import NIOCore
import NIOHTTP1

/// The TCP peer of a client connection, resolved once per connection: its text (for
/// `X-Forwarded-For` and logs) and its bytes (for `trusted_proxies` lookups).
struct PeerAddress: Sendable, Equatable {
    /// IPv4 dotted quad or IPv6 text; `unknown` for a non-IP peer (e.g. a Unix socket in tests).
    let text: String
    /// 4 bytes (IPv4, including IPv4-mapped IPv6 peers) or 16 bytes; `nil` for a non-IP peer.
    let bytes: [UInt8]?

    /// A non-IP peer (or none yet).
    static let unknown = PeerAddress(text: "unknown", bytes: nil)

    /// Once per connection. An IPv4 peer (the common case) is read straight from its `sockaddr_in`;
    /// going through its text made ~10 allocations and ~100 reference-count operations.
    init(_ address: SocketAddress?) {
        if case .v4(let v4) = address {
            let raw = UInt32(bigEndian: v4.address.sin_addr.s_addr)
            let bytes = [UInt8(truncatingIfNeeded: raw >> 24), UInt8(truncatingIfNeeded: raw >> 16),
                         UInt8(truncatingIfNeeded: raw >> 8), UInt8(truncatingIfNeeded: raw)]
            self.init(text: IPAddressText.format(bytes), bytes: bytes)
        } else {
            self.init(text: RequestIdentity.clientIP(address))
        }
    }

    private init(text: String, bytes: [UInt8]?) {
        self.text = text
        self.bytes = bytes
    }

    /// From text such as `203.0.113.7`, `2001:db8::1` or `::ffff:192.0.2.1` (normalised to IPv4).
    init(text: String) {
        if let bytes = IPAddressText.parse(Substring(text)) {
            self.bytes = bytes
            self.text = bytes.count == 4 ? IPAddressText.format(bytes) : text
        } else {
            self.bytes = nil
            self.text = text
        }
    }
}

/// Who the client is, as far as the gateway can tell (SPEC "Client IP").
struct ClientIdentity: Sendable, Equatable {
    /// The address used for logs and rate-limit keys.
    var ip: String
    /// The TCP peer's address (appended to `X-Forwarded-For`).
    var peer: String
    /// Whether the peer is in `client_ip.trusted_proxies`: its forwarding headers are kept.
    var peerTrusted: Bool
}

/// Resolves the client IP from the TCP peer and, only when the peer is a trusted proxy, from the
/// forwarding headers it sent (issue 4 §4). Built once at config load; pure, so the HTTP/1.1 and
/// HTTP/2 paths share it.
///
/// From a trusted peer: `client_ip.header` (e.g. `cf-connecting-ip`) when present, else the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy — the right-most entries
/// were appended by proxies we trust, anything further left was written by the client and could
/// be forged. A malformed value (not exactly one IP address) falls back to the peer, which is
/// always truthful.
struct ClientIPResolver: Sendable {
    let trustedNetworks: [IPNetwork]
    /// Lowercased header name carrying the client IP from a trusted proxy.
    let header: String

    init(trustedNetworks: [IPNetwork], header: String) {
        self.trustedNetworks = trustedNetworks
        self.header = header.lowercased()
    }

    /// Expands the `cloudflare` preset into the shipped ranges (`CloudflareRanges`).
    init(_ config: ClientIPConfig) {
        var networks: [IPNetwork] = []
        for proxy in config.trustedProxies {
            switch proxy {
            case .network(let network): networks.append(network)
            case .cloudflare: networks.append(contentsOf: CloudflareRanges.networks)
            }
        }
        self.init(trustedNetworks: networks, header: config.header)
    }

    func isTrusted(_ bytes: [UInt8]?) -> Bool {
        guard let bytes, !self.trustedNetworks.isEmpty else { return false }
        return self.trustedNetworks.contains { $0.contains(bytes) }
    }

    func resolve(peer: PeerAddress, headers: HeadFields) -> ClientIdentity {
        guard self.isTrusted(peer.bytes) else {
            return ClientIdentity(ip: peer.text, peer: peer.text, peerTrusted: false)
        }
        var identity = ClientIdentity(ip: peer.text, peer: peer.text, peerTrusted: true)
        let named = headers[self.header]
        if !named.isEmpty {
            // Several copies of the header cannot be told apart: which one did the proxy write?
            if named.count == 1, let bytes = IPAddressText.parse(Self.trimmed(named[0])) {
                identity.ip = IPAddressText.format(bytes)
            }
            return identity
        }
        // RFC 7239 §5.2 / de-facto XFF: each proxy appends the address it received from.
        let entries = headers[canonicalForm: "x-forwarded-for"]
        guard !entries.isEmpty else { return identity }
        for entry in entries.reversed() {
            guard let bytes = IPAddressText.parse(Self.trimmed(entry)) else { return identity }
            if !self.isTrusted(bytes) {
                identity.ip = IPAddressText.format(bytes)
                return identity
            }
        }
        // Every hop is a trusted proxy: the left-most one is the furthest we can see.
        if let first = entries.first, let bytes = IPAddressText.parse(Self.trimmed(first)) {
            identity.ip = IPAddressText.format(bytes)
        }
        return identity
    }

    private static func trimmed<S: StringProtocol>(_ value: S) -> Substring {
        var slice = Substring(value)
        while let first = slice.first, first == " " || first == "\t" { slice.removeFirst() }
        while let last = slice.last, last == " " || last == "\t" { slice.removeLast() }
        return slice
    }
}

/// IP address text ↔ bytes for client-IP handling.
enum IPAddressText {
    /// Strict IPv4 (no leading zeros) or RFC 4291 IPv6 text, nothing else (no port, no brackets,
    /// no zone). IPv4-mapped IPv6 (`::ffff:a.b.c.d`) comes back as its 4 IPv4 bytes.
    static func parse(_ text: Substring) -> [UInt8]? {
        if let v4 = IPNetwork.parseIPv4(text) { return v4 }
        guard text.utf8.count <= 45, let v6 = IPNetwork.parseIPv6(text) else { return nil }
        if v6[0..<10].allSatisfy({ $0 == 0 }) && v6[10] == 0xFF && v6[11] == 0xFF {
            return Array(v6[12..<16])
        }
        return v6
    }

    /// Written in place: one string, no digit strings joined.
    static func dottedQuad(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) -> String {
        String(unsafeUninitializedCapacity: 15) { out in
            var count = 0
            func octet(_ value: UInt8) {
                if value >= 100 {
                    out[count] = UInt8(ascii: "0") + value / 100
                    count += 1
                }
                if value >= 10 {
                    out[count] = UInt8(ascii: "0") + value / 10 % 10
                    count += 1
                }
                out[count] = UInt8(ascii: "0") + value % 10
                count += 1
            }
            octet(a)
            out[count] = UInt8(ascii: ".")
            count += 1
            octet(b)
            out[count] = UInt8(ascii: ".")
            count += 1
            octet(c)
            out[count] = UInt8(ascii: ".")
            count += 1
            octet(d)
            return count
        }
    }

    /// Dotted quad, or RFC 5952 IPv6 text (lowercase, the longest run of two or more zero groups
    /// compressed, the first such run on a tie).
    static func format(_ bytes: [UInt8]) -> String {
        if bytes.count == 4 { return Self.dottedQuad(bytes[0], bytes[1], bytes[2], bytes[3]) }
        var groups: [UInt16] = []
        for i in stride(from: 0, to: 16, by: 2) { groups.append(UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1])) }
        var bestStart = -1, bestLength = 0, runStart = -1
        for i in 0...8 {
            if i < 8 && groups[i] == 0 {
                if runStart < 0 { runStart = i }
            } else if runStart >= 0 {
                if i - runStart > bestLength && i - runStart >= 2 { bestStart = runStart; bestLength = i - runStart }
                runStart = -1
            }
        }
        func hex(_ range: Range<Int>) -> String { range.map { String(groups[$0], radix: 16) }.joined(separator: ":") }
        if bestStart < 0 { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }
}
