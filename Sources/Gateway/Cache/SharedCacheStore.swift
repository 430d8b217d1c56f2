import Foundation
import NIOCore
import NIOHTTP1
import RedisClient
import Synchronization

/// Entries in Redis, shared by every gateway instance on the same server: the in-process LRU
/// answers first, a local miss asks Redis before the upstream, and what a fetch stores goes to
/// both. Redis unreachable, slow (past `redis.timeout`) or answering garbage is a miss.
///
/// Keys of one request (its `Vary` list and its variants) share a `{…}` hash tag, so in Redis
/// Cluster they live in one slot and one pipelined call reads them.
///
/// Values are the serialized entry in base64: the Redis client takes `String` arguments,
/// which must be valid UTF-8, and a body need not be.
final class SharedCacheStore: Sendable {
    let client: any RedisCommandSender
    let timeout: TimeAmount
    private let prefix: String

    init(client: any RedisCommandSender, timeout: TimeAmount, route: String) {
        self.client = client
        self.timeout = timeout
        self.prefix = "gwcache:" + route + ":"
    }

    /// The fresh (or within `stale-*`) entry for the request, nil on a miss or any failure.
    func load(_ request: CacheRequest, on eventLoop: EventLoop) -> EventLoopFuture<CachedResponse?> {
        let varyKey = self.prefix + "v:" + Self.tagged(request.baseKey)
        let plainKey = self.prefix + Self.tagged(request.baseKey)
        return self.client.send(commands: [["MGET", varyKey, plainKey]], key: plainKey, timeout: self.timeout)
            .hop(to: eventLoop)
            .flatMap { replies -> EventLoopFuture<CachedResponse?> in
                guard let values = replies.first?.array, values.count == 2 else { return eventLoop.makeSucceededFuture(nil) }
                let names = values[0].string.map { $0.split(separator: ",").map(String.init) } ?? []
                if names.isEmpty { return eventLoop.makeSucceededFuture(Self.decode(values[1])) }
                let key = plainKey + CachePolicy.varyPart(names, request: request.headers)
                return self.client.send(commands: [["GET", key]], key: key, timeout: self.timeout)
                    .hop(to: eventLoop).map { Self.decode($0.first ?? .null) }
            }
            .flatMapErrorThrowing { _ in nil }
    }

    /// Fire and forget: a failed write only means the next instance fetches again.
    func store(_ entry: CachedResponse, baseKey: String, key: String) {
        let lifetime = entry.freshness.lifetime - entry.freshness.initialAge
        let keep = max(lifetime, 0) + max(entry.freshness.staleWhileRevalidate, entry.freshness.staleIfError)
        guard keep > 0 else { return }
        let ttl = String(keep * 1000)
        let tagged = Self.tagged(baseKey)
        let storedKey = self.prefix + tagged + key.dropFirst(baseKey.count)
        var commands = [["SET", storedKey, Self.encode(entry), "PX", ttl]]
        if !entry.freshness.vary.isEmpty {
            commands.append(["SET", self.prefix + "v:" + tagged, entry.freshness.vary.joined(separator: ","), "PX", ttl])
        }
        _ = self.client.send(commands: commands, key: storedKey, timeout: self.timeout)
    }

    /// Deletes the entries whose path starts with `pathPrefix` (SCAN, then DEL), in the background.
    /// SCAN walks one server: in Redis Cluster the other masters' entries are left to their TTL.
    func purge(pathPrefix: String) {
        self.purgeStep(cursor: "0", pathPrefix: pathPrefix, rounds: 0)
    }

    private func purgeStep(cursor: String, pathPrefix: String, rounds: Int) {
        guard rounds < 10_000 else { return }
        let pattern = self.prefix.replacingOccurrences(of: "*", with: "\\*") + "*"
        self.client.send(commands: [["SCAN", cursor, "MATCH", pattern, "COUNT", "500"]], key: nil, timeout: .seconds(2)).whenSuccess { replies in
            guard let parts = replies.first?.array, parts.count == 2, let next = parts[0].string, let keys = parts[1].array else { return }
            let doomed = keys.compactMap(\.string).filter { key in
                var stored = key.dropFirst(self.prefix.count)
                if stored.hasPrefix("v:") { stored = stored.dropFirst(2) }
                if stored.hasPrefix("{") { stored = stored.dropFirst() }
                return CachePolicy.path(ofKey: String(stored)).hasPrefix(pathPrefix)
            }
            // One DEL per key: keys of different requests may sit in different cluster slots.
            if !doomed.isEmpty { _ = self.client.send(commands: doomed.map { ["DEL", $0] }, key: nil, timeout: .seconds(2)) }
            if next != "0" { self.purgeStep(cursor: next, pathPrefix: pathPrefix, rounds: rounds + 1) }
        }
    }

    /// The request's base key as a Redis Cluster hash tag: what lies between the first `{` and the
    /// next `}` picks the slot, the same for every key of the request.
    static func tagged(_ baseKey: String) -> String { "{" + baseKey + "}" }

    // MARK: - Serialization

    private static let magic: UInt32 = 0x4757_4331  // "GWC1"

    static func encode(_ entry: CachedResponse, wallClock: Date = Date(), now: NIODeadline = .now()) -> String {
        var buffer = ByteBuffer()
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(UInt16(entry.head.status.code))
        buffer.writeInteger(UInt16(entry.head.headers.count))
        for (name, value) in entry.head.headers {
            Self.writeString(name, to: &buffer)
            Self.writeString(value, to: &buffer)
        }
        let f = entry.freshness
        for number in [f.lifetime, f.initialAge, f.staleWhileRevalidate, f.staleIfError] { buffer.writeInteger(Int64(number)) }
        buffer.writeInteger(UInt16(f.vary.count))
        for name in f.vary { Self.writeString(name, to: &buffer) }
        // Age crosses instances by the wall clock: monotonic deadlines mean nothing elsewhere.
        let storedAtMs = Int64(wallClock.timeIntervalSince1970 * 1000) - (now - entry.storedAt).nanoseconds / 1_000_000
        buffer.writeInteger(storedAtMs)
        buffer.writeInteger(UInt32(entry.body.readableBytes))
        buffer.writeImmutableBuffer(entry.body)
        return Data(buffer.readableBytesView).base64EncodedString()
    }

    static func decode(_ value: RESPValue) -> CachedResponse? {
        guard case .bulkString(let bytes) = value else { return nil }
        return Self.decode(base64: bytes)
    }

    static func decode(base64 bytes: [UInt8], wallClock: Date = Date(), now: NIODeadline = .now()) -> CachedResponse? {
        guard let data = Data(base64Encoded: Data(bytes)) else { return nil }
        var buffer = ByteBuffer(bytes: data)
        guard buffer.readInteger(as: UInt32.self) == Self.magic,
            let status = buffer.readInteger(as: UInt16.self),
            let fieldCount = buffer.readInteger(as: UInt16.self)
        else { return nil }
        var headers = HTTPHeaders()
        for _ in 0..<fieldCount {
            guard let name = Self.readString(&buffer), let value = Self.readString(&buffer) else { return nil }
            headers.add(name: name, value: value)
        }
        var numbers: [Int] = []
        for _ in 0..<4 {
            guard let number = buffer.readInteger(as: Int64.self) else { return nil }
            numbers.append(Int(number))
        }
        guard let varyCount = buffer.readInteger(as: UInt16.self) else { return nil }
        var vary: [String] = []
        for _ in 0..<varyCount {
            guard let name = Self.readString(&buffer) else { return nil }
            vary.append(name)
        }
        guard let storedAtMs = buffer.readInteger(as: Int64.self),
            let bodyLength = buffer.readInteger(as: UInt32.self),
            let body = buffer.readSlice(length: Int(bodyLength)), buffer.readableBytes == 0
        else { return nil }
        let elapsedMs = max(0, Int64(wallClock.timeIntervalSince1970 * 1000) - storedAtMs)
        let freshness = CachePolicy.Freshness(
            lifetime: numbers[0], initialAge: numbers[1], staleWhileRevalidate: numbers[2], staleIfError: numbers[3], vary: vary
        )
        return CachedResponse(
            head: HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: Int(status)), headers: headers),
            body: body, freshness: freshness, storedAt: now - .milliseconds(elapsedMs)
        )
    }

    private static func writeString(_ text: String, to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(text.utf8.count))
        buffer.writeString(text)
    }

    private static func readString(_ buffer: inout ByteBuffer) -> String? {
        guard let length = buffer.readInteger(as: UInt32.self) else { return nil }
        return buffer.readString(length: Int(length))
    }
}

/// The Redis client of the response caches, carried over reloads while the `redis` section stays
/// the same.
final class ResponseCacheStores: Sendable {
    private let redis = Mutex<(identity: String, client: any RedisCommandSender)?>(nil)

    func client(_ config: RedisConfig, group: EventLoopGroup) -> any RedisCommandSender {
        let identity = config.connectionIdentity
        return self.redis.withLock { current in
            if let current, current.identity == identity { return current.client }
            // Connection trouble is logged and counted by the rate limiter's client of the same
            // servers; a cache failure is only a miss.
            let client = config.makeClient(group: group) { _ in }
            if let old = current { _ = old.client.shutdown() }
            current = (identity, client)
            return client
        }
    }
}
