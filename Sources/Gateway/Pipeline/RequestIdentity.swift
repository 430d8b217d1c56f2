import NIOCore
import Synchronization

/// Request ids: the client's `X-Request-Id` when it is 1–128 chars of `[A-Za-z0-9._-]` (SPEC),
/// else a fresh one. Fresh ids are a per-process random prefix plus a counter: unique, cheap (no
/// syscall per request), and not meant to be secret.
enum RequestIdentity {
    private static let prefix: String = {
        var generator = SystemRandomNumberGenerator()
        let value = generator.next() as UInt64
        return String(value, radix: 16).leftPadded(to: 16)
    }()
    private static let counter = Atomic<UInt64>(0)

    static func isAcceptable(_ id: String) -> Bool {
        let bytes = id.utf8
        guard (1...128).contains(bytes.count) else { return false }
        return bytes.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
                true
            default: false
            }
        }
    }

    static func requestID(clientSupplied: String?) -> String {
        if let clientSupplied, isAcceptable(clientSupplied) { return clientSupplied }
        let next = counter.add(1, ordering: .relaxed).newValue
        // Written in one go (28 bytes: one allocation), not built from padded pieces.
        let prefix = Self.prefix
        return String(unsafeUninitializedCapacity: 28) { out in
            var count = 0
            for byte in prefix.utf8 {
                out[count] = byte
                count += 1
            }
            var shift = 44
            while shift >= 0 {
                out[count] = Self.hexDigits[Int((next >> UInt64(shift)) & 0xF)]
                count += 1
                shift -= 4
            }
            return count
        }
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// The client address as text; an IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`) is its IPv4 address.
    static func clientIP(_ address: SocketAddress?) -> String {
        guard let address else { return "unknown" }
        guard var ip = address.ipAddress else { return "unknown" }
        if ip.hasPrefix("::ffff:"), ip.contains(".") { ip.removeFirst(7) }
        return ip
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        let missing = width - self.utf8.count
        return missing > 0 ? String(repeating: "0", count: missing) + self : self
    }
}
