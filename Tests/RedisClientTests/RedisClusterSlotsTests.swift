import NIOCore
import NIOEmbedded
import NIOPosix
import Synchronization
@testable import RedisClient
import Testing

/// The cluster client's pure parts: key → slot, slot maps, redirections, `rediss://`.
@Suite struct RedisClusterSlotsTests {
    @Test func slotsMatchRedis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0 (and the spec's CRC16 check value 0x31C3).
        #expect(RedisClusterSlots.slot(for: "123456789") == 0x31C3 % 16384)
        #expect(RedisClusterSlots.slot(for: "foo") == 12182)
        #expect(RedisClusterSlots.slot(for: "gw:rl:{ip:127.0.0.1}:tight") == RedisClusterSlots.slot(for: "ip:127.0.0.1"))
        #expect(RedisClusterSlots.slot(for: "{user1000}.following") == RedisClusterSlots.slot(for: "{user1000}.followers"))
        // An empty tag is no tag: the whole key is hashed.
        #expect(RedisClusterSlots.slot(for: "foo{}{bar}") != RedisClusterSlots.slot(for: "bar"))
        #expect(RedisClusterSlots.slot(for: "foo{{bar}}zap") == RedisClusterSlots.slot(for: "{bar"))
    }

    @Test func redirections() {
        #expect(RedisClusterSlots.redirect(.error("MOVED 3999 127.0.0.1:6381")) == .moved(slot: 3999, host: "127.0.0.1", port: 6381))
        #expect(RedisClusterSlots.redirect(.error("ASK 12 [::1]:7000")) == .ask(slot: 12, host: "::1", port: 7000))
        #expect(RedisClusterSlots.redirect(.error("MOVED 5 :7001")) == .moved(slot: 5, host: "", port: 7001))
        #expect(RedisClusterSlots.redirect(.error("ERR unknown command")) == nil)
        #expect(RedisClusterSlots.redirect(.simpleString("MOVED 1 a:1")) == nil)
    }

    private func bulk(_ s: String) -> RESPValue { .bulkString(Array(s.utf8)) }

    @Test func shardsAndSlotsReplies() {
        let node: (String, Int64, String) -> RESPValue = { ip, port, role in
            .array([bulk("id"), bulk("x"), bulk("port"), .integer(port), bulk("tls-port"), .integer(port + 1000),
                    bulk("ip"), bulk(ip), bulk("endpoint"), bulk(ip), bulk("role"), bulk(role), bulk("health"), bulk("online")])
        }
        let shards = RESPValue.array([
            .array([bulk("slots"), .array([.integer(0), .integer(99), .integer(200), .integer(300)]),
                    bulk("nodes"), .array([node("10.0.0.2", 7002, "replica"), node("10.0.0.1", 7001, "master")])]),
            .array([bulk("slots"), .array([.integer(100), .integer(199)]), bulk("nodes"), .array([node("10.0.0.3", 7003, "master")])]),
        ])
        let plain = RedisClusterSlots.fromShards(shards, tls: false)
        #expect(plain == [.init(first: 0, last: 99, host: "10.0.0.1", port: 7001), .init(first: 200, last: 300, host: "10.0.0.1", port: 7001),
                          .init(first: 100, last: 199, host: "10.0.0.3", port: 7003)])
        #expect(RedisClusterSlots.fromShards(shards, tls: true)?.first?.port == 8001)
        #expect(RedisClusterSlots.fromShards(.error("ERR unknown subcommand"), tls: false) == nil)
        // A preferred hostname endpoint wins over the address.
        let named = RESPValue.array([.array([bulk("slots"), .array([.integer(0), .integer(16383)]), bulk("nodes"), .array([
            .array([bulk("port"), .integer(6379), bulk("ip"), bulk("10.0.0.9"), bulk("endpoint"), bulk("node-1.cache.example"),
                    bulk("role"), bulk("master")])])])])
        #expect(RedisClusterSlots.fromShards(named, tls: true) == [.init(first: 0, last: 16383, host: "node-1.cache.example", port: 6379)])
        let slots = RESPValue.array([.array([.integer(0), .integer(5460), .array([bulk("127.0.0.1"), .integer(30001), bulk("id")])])])
        #expect(RedisClusterSlots.fromSlots(slots) == [.init(first: 0, last: 5460, host: "127.0.0.1", port: 30001)])
    }

    @Test func redissTurnsOnTLSAndPingsThroughTheHandshake() throws {
        let c = try RedisConfiguration(url: "rediss://cache.example:6380")
        #expect(c.tls == RedisTLSSettings() && c.tls?.verify == true)
        #expect(c.handshake == [["PING"]])  // readiness waits for the TLS handshake
        #expect(c.description == "rediss://cache.example:6380/0")
        #expect(try RedisConfiguration(url: "redis://h:1").tls == nil)
        #expect(c.with(host: "::1", port: 7000).address == "[::1]:7000")
    }

    /// With nothing reachable, cluster and Sentinel clients fail at once instead of queueing:
    /// the rate limiter's deadline is never spent waiting for a map or a master.
    @Test func nothingReachableFailsAtOnce() async throws {
        try await withOwnEventLoop { group in
            let dead = freePort()
            let config = RedisConfiguration(host: "", port: 0)
            let cluster = RedisClusterClient(configuration: config, seeds: [("127.0.0.1", dead)], eventLoopGroup: group)
            let (r1, t1) = await timedFuture { cluster.send(["GET", "k"], key: "k") }
            #expect(r1.error as? RedisError == .noRoute && t1 < .milliseconds(100))
            #expect(!cluster.hasSlotMap && cluster.nodeStates.map(\.connections) == [0])
            let sentinel = RedisSentinelClient(configuration: config, sentinels: [("127.0.0.1", dead)], masterName: "m",
                                               eventLoopGroup: group)
            let (r2, t2) = await timedFuture { sentinel.send(["GET", "k"], key: "k") }
            #expect(r2.error as? RedisError == .noRoute && t2 < .milliseconds(100))
            #expect(sentinel.masterAddress == nil)
            try await cluster.shutdown().get()
            try await sentinel.shutdown().get()
        }
    }

    /// The subscription handler subscribes once active and reports `+switch-master` payloads,
    /// ignoring the subscribe confirmation and other channels' shapes.
    @Test func switchMasterMessagesAreReported() throws {
        let seen = Mutex<[String]>([])
        let channel = EmbeddedChannel(handler: SentinelSwitchHandler { name, host, port in
            seen.withLock { $0.append("\(name) \(host):\(port)") }
        })
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 26379)).wait()
        var written = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(written.readString(length: written.readableBytes) == "*2\r\n$9\r\nSUBSCRIBE\r\n$14\r\n+switch-master\r\n")
        let confirm = "*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
        let payload = "mymaster 127.0.0.1 6379 127.0.0.1 6380"
        let message = "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$\(payload.utf8.count)\r\n\(payload)\r\n"
        // Split mid-message: the reader keeps the partial reply.
        let bytes = Array((confirm + message).utf8)
        try channel.writeInbound(ByteBuffer(bytes: bytes[..<50]))
        try channel.writeInbound(ByteBuffer(bytes: bytes[50...]))
        #expect(seen.withLock { $0 } == ["mymaster 127.0.0.1:6380"])
        _ = try? channel.finish()
    }
}
