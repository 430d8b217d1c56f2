/// The pure half of the cluster client (STYLE habit 1): key → slot, the slot map read from
/// `CLUSTER SHARDS` / `CLUSTER SLOTS`, and `MOVED` / `ASK` replies. No I/O here.
public enum RedisClusterSlots {
    public static let count = 16384

    /// The key's hash slot: CRC16 (XMODEM) of the hash tag — the text between the first `{` and
    /// the next `}` when that text is not empty — or of the whole key, modulo 16384
    /// (Redis Cluster specification, "Keys distribution model").
    public static func slot(for key: String) -> Int {
        var key = key  // withUTF8 is mutating; a native string is not copied
        return key.withUTF8 { all in
            var bytes = all[...]
            if let open = all.firstIndex(of: UInt8(ascii: "{")),
               let close = all[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1 {
                bytes = all[(open + 1)..<close]
            }
            var crc: UInt16 = 0
            for b in bytes {
                crc = (crc << 8) ^ crc16Table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ b)]
            }
            return Int(crc) & (count - 1)
        }
    }

    private static let crc16Table: [UInt16] = (0..<256).map { i -> UInt16 in
        var c = UInt16(i) << 8
        for _ in 0..<8 { c = (c & 0x8000) != 0 ? (c << 1) ^ 0x1021 : c << 1 }
        return c
    }

    /// A contiguous slot range and the master serving it.
    public struct Range: Sendable, Equatable {
        public var first: Int
        public var last: Int
        public var host: String
        public var port: Int
    }

    /// Master ranges from a `CLUSTER SHARDS` reply (Redis 7): per shard a flat map with `slots`
    /// (start, end pairs) and `nodes` (flat maps; the one with `role` `master` serves). With
    /// `tls`, a node's `tls-port` is used when it has one. Nil when the reply has another shape.
    public static func fromShards(_ reply: RESPValue, tls: Bool) -> [Range]? {
        guard let shards = reply.array else { return nil }
        var ranges: [Range] = []
        for shard in shards {
            guard let fields = flatMap(shard), let slots = fields["slots"]?.array,
                  let nodes = fields["nodes"]?.array else { return nil }
            let masters = nodes.compactMap(flatMap).filter { $0["role"]?.string == "master" }
            guard let master = masters.first(where: { $0["health"]?.string != "fail" }) ?? masters.first else { continue }
            // `endpoint` is what the server wants clients to use (`cluster-preferred-endpoint-type`:
            // a hostname on managed services, whose TLS certificates name hosts, not addresses).
            let host = [master["endpoint"], master["hostname"], master["ip"]].compactMap { $0?.string }
                .first { !$0.isEmpty && $0 != "?" }
            let port = (tls ? master["tls-port"]?.integer : nil) ?? master["port"]?.integer
            guard let host, let port else { continue }
            var i = 0
            while i + 1 < slots.count {
                guard let a = slots[i].integer, let b = slots[i + 1].integer else { return nil }
                ranges.append(Range(first: Int(a), last: Int(b), host: host, port: Int(port)))
                i += 2
            }
        }
        return ranges
    }

    /// Master ranges from a `CLUSTER SLOTS` reply (servers before 7): `[start, end, [ip, port,
    /// id], replicas…]` per range.
    public static func fromSlots(_ reply: RESPValue) -> [Range]? {
        guard let rows = reply.array else { return nil }
        var ranges: [Range] = []
        for row in rows {
            guard let r = row.array, r.count >= 3, let a = r[0].integer, let b = r[1].integer,
                  let master = r[2].array, master.count >= 2, let host = master[0].string,
                  let port = master[1].integer else { return nil }
            ranges.append(Range(first: Int(a), last: Int(b), host: host, port: Int(port)))
        }
        return ranges
    }

    private static func flatMap(_ value: RESPValue) -> [String: RESPValue]? {
        guard let items = value.array, items.count % 2 == 0 else { return nil }
        var out: [String: RESPValue] = [:]
        for i in stride(from: 0, to: items.count, by: 2) {
            guard let k = items[i].string else { return nil }
            out[k] = items[i + 1]
        }
        return out
    }

    /// A redirection answered by a node that does not serve the slot.
    public enum Redirect: Sendable, Equatable {
        /// The slot lives at `host:port` for good: update the map.
        case moved(slot: Int, host: String, port: Int)
        /// The slot is migrating: send this one command there, preceded by `ASKING`.
        case ask(slot: Int, host: String, port: Int)
    }

    /// `MOVED 3999 127.0.0.1:6381` / `ASK 3999 127.0.0.1:6381`; nil for other replies.
    public static func redirect(_ reply: RESPValue) -> Redirect? {
        guard let message = reply.errorMessage else { return nil }
        let parts = message.split(separator: " ")
        guard parts.count == 3, parts[0] == "MOVED" || parts[0] == "ASK", let slot = Int(parts[1]),
              let colon = parts[2].lastIndex(of: ":"), let port = Int(parts[2][parts[2].index(after: colon)...]) else { return nil }
        var host = String(parts[2][..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return parts[0] == "MOVED" ? .moved(slot: slot, host: host, port: port) : .ask(slot: slot, host: host, port: port)
    }
}
