import Foundation
import NIOCore
import NIOHTTP1
import RedisClient
import Synchronization

/// Entries in Redis, shared by every gateway instance on the same server: the in-process LRU
/// answers first, a local miss asks Redis before the upstream, and what a fetch stores goes to
/// both. Redis unreachable, slow (past `redis.timeout`) or answering garbage is a miss.
///
/// Values are the serialized entry in base64: `RedisConnectionPool` takes `String` arguments,
/// which must be valid UTF-8, and a body need not be.
final class SharedCacheStore: Sendable {
    let pool: RedisConnectionPool
    let timeout: TimeAmount
    private let prefix: String

    init(pool: RedisConnectionPool, timeout: TimeAmount, route: String) {
        self.pool = pool
        self.timeout = timeout
        self.prefix = "gwcache:" + route + ":"
    }

    /// The fresh (or within `stale-*`) entry for the request, nil on a miss or any failure.
    func load(_ request: CacheRequest, on eventLoop: EventLoop) -> EventLoopFuture<CachedResponse?> {
        let varyKey = self.prefix + "v:" + request.baseKey
        let plainKey = self.prefix + request.baseKey
        return self.pool.send(["MGET", varyKey, plainKey], timeout: self.timeout)
            .hop(to: eventLoop)
            .flatMap { reply -> EventLoopFuture<CachedResponse?> in
                guard let values = reply.array, values.count == 2 else { return eventLoop.makeSucceededFuture(nil) }
                let names = values[0].string.map { $0.split(separator: ",").map(String.init) } ?? []
                if names.isEmpty { return eventLoop.makeSucceededFuture(Self.decode(values[1])) }
                let key = plainKey + CachePolicy.varyPart(names, request: request.headers)
                return self.pool.send(["GET", key], timeout: self.timeout).hop(to: eventLoop).map(Self.decode)
            }
            .flatMapErrorThrowing { _ in nil }
    }

    /// Fire and forget: a failed write only means the next instance fetches again.
    func store(_ entry: CachedResponse, baseKey: String, key: String) {
        let lifetime = entry.freshness.lifetime - entry.freshness.initialAge
        let keep = max(lifetime, 0) + max(entry.freshness.staleWhileRevalidate, entry.freshness.staleIfError)
        guard keep > 0 else { return }
        let ttl = String(keep * 1000)
        var commands = [["SET", self.prefix + key, Self.encode(entry), "PX", ttl]]
        if !entry.freshness.vary.isEmpty {
            commands.append(["SET", self.prefix + "v:" + baseKey, entry.freshness.vary.joined(separator: ","), "PX", ttl])
        }
        _ = self.pool.send(commands: commands, timeout: self.timeout)
    }

    /// Deletes the entries whose path starts with `pathPrefix` (SCAN, then DEL), in the background.
    func purge(pathPrefix: String) {
        self.purgeStep(cursor: "0", pathPrefix: pathPrefix, rounds: 0)
    }

    private func purgeStep(cursor: String, pathPrefix: String, rounds: Int) {
        guard rounds < 10_000 else { return }
        let pattern = self.prefix.replacingOccurrences(of: "*", with: "\\*") + "*"
        self.pool.send(["SCAN", cursor, "MATCH", pattern, "COUNT", "500"], timeout: .seconds(2)).whenSuccess { reply in
            guard let parts = reply.array, parts.count == 2, let next = parts[0].string, let keys = parts[1].array else { return }
            let doomed = keys.compactMap(\.string).filter { key in
                var stored = key.dropFirst(self.prefix.count)
                if stored.hasPrefix("v:") { stored = stored.dropFirst(2) }
                return CachePolicy.path(ofKey: String(stored)).hasPrefix(pathPrefix)
            }
            if !doomed.isEmpty { _ = self.pool.send(["DEL"] + doomed, timeout: .seconds(2)) }
            if next != "0" { self.purgeStep(cursor: next, pathPrefix: pathPrefix, rounds: rounds + 1) }
        }
    }

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

/// The Redis pool of the response caches, carried over reloads while `redis.url` stays the same.
final class ResponseCacheStores: Sendable {
    private let redis = Mutex<(url: String, pool: RedisConnectionPool)?>(nil)

    func pool(endpoint: RedisEndpoint, group: EventLoopGroup) -> RedisConnectionPool {
        // In memory only: identifies the server and credentials, never printed.
        let url = [endpoint.host, String(endpoint.port), String(endpoint.database), endpoint.username ?? "",
                   endpoint.password?.value ?? ""].joined(separator: "\u{0}")
        return self.redis.withLock { current in
            if let current, current.url == url { return current.pool }
            let configuration = RedisConfiguration(
                host: endpoint.host, port: endpoint.port, username: endpoint.username,
                password: endpoint.password?.value, database: endpoint.database
            )
            let pool = RedisConnectionPool(configuration: configuration, eventLoopGroup: group)
            if let old = current { _ = old.pool.shutdown() }
            current = (url, pool)
            return pool
        }
    }
}
