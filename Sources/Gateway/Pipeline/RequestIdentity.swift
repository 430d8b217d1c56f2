import NIOCore
import Synchronization

/// Request ids: the client's `X-Request-Id` when it is 1–128 chars of `[A-Za-z0-9._-]` (SPEC),
/// else a fresh one. Fresh ids are a per-process random prefix plus a counter: unique, cheap (no
/// syscall per request), and not meant to be secret.
enum RequestIdentity {
    /// The 64 symbols of an id, in ASCII order. Static text: read through a pointer, no array
    /// to reference-count.
    private static let symbols: StaticString = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
    /// The process's 48 random bits as its ids' first 8 symbols, made once (not per id), packed
    /// in memory order so one store writes them.
    private static let prefix: UInt64 = {
        var generator = SystemRandomNumberGenerator()
        let bits = (generator.next() as UInt64) & 0xFFFF_FFFF_FFFF
        var packed: UInt64 = 0
        for index in 0..<8 { packed |= UInt64(symbol(bits >> UInt64(42 - 6 * index))) << UInt64(8 * index) }
        return UInt64(littleEndian: packed)
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

    /// A fresh id is 15 symbols: the process's 48 random bits in 8, then a 42-bit counter in 7.
    /// Fifteen UTF-8 bytes are what a Swift string holds inline: the id, copied into headers, the
    /// log and error bodies, never allocates. The symbols are `[A-Za-z0-9._-]`'s `-`, digits,
    /// capitals, `_` and small letters, in ASCII order, so ids of one process sort by arrival.
    static func requestID(clientSupplied: String?) -> String {
        if let clientSupplied, isAcceptable(clientSupplied) { return clientSupplied }
        let next = counter.add(1, ordering: .relaxed).newValue
        let prefix = Self.prefix
        return String(unsafeUninitializedCapacity: 15) { out in
            UnsafeMutableRawPointer(out.baseAddress!).storeBytes(of: prefix, as: UInt64.self)
            for index in 0..<7 { out[8 + index] = Self.symbol(next >> UInt64(36 - 6 * index)) }
            return 15
        }
    }

    /// The symbol for the low 6 bits of `bits`.
    @inline(__always)
    private static func symbol(_ bits: UInt64) -> UInt8 {
        Self.symbols.utf8Start[Int(bits & 0x3F)]
    }

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
