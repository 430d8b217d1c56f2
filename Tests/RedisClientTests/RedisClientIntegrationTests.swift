import Foundation
import NIOCore
import NIOPosix
import Testing
import RedisClient
import Synchronization

/// Tier 4 (STYLE habit 13): the client against a real redis-server. The shared server
/// (`REDIS_TEST_URL`, from scripts/with-redis.sh) serves the read/write tests under unique keys;
/// tests that kill, block or reconfigure a server start their own on a free port.
@Suite(.needsRedis)
struct RedisClientIntegrationTests {
    let prefix = "test:\(UUID().uuidString):"

    @Test func replyTypesFromARealServer() async throws {
        let pool = try await connectedPool(configuration(sharedRedisURL!))
        #expect(try await pool.send(["SET", prefix + "s", "a\r\nb"]) == .simpleString("OK"))
        #expect(try await pool.send(["GET", prefix + "s"]) == .bulkString(Array("a\r\nb".utf8)))
        #expect(try await pool.send(["GET", prefix + "missing"]) == .null)
        #expect(try await pool.send(["INCRBY", prefix + "n", "-5"]) == .integer(-5))
        _ = try await pool.send(["RPUSH", prefix + "l", "x", "", "z"])
        #expect(try await pool.send(["LRANGE", prefix + "l", "0", "-1"]) == .array([.bulkString([120]), .bulkString([]), .bulkString([122])]))
        #expect(try await pool.send(["LRANGE", prefix + "nothing", "0", "-1"]) == .array([]))
        let nested = try await pool.send(["EVAL", "return {1, {'x', 2}, false}", "0"])
        #expect(nested == .array([.integer(1), .array([.bulkString([120]), .integer(2)]), .null]))
        let err = try await pool.send(["NOSUCHCOMMAND"])
        #expect(err.errorMessage?.hasPrefix("ERR unknown command") == true)
        // An error reply leaves the connection healthy.
        #expect(try await pool.send(["PING"]) == .simpleString("PONG"))
        _ = try await pool.send(["DEL", prefix + "s", prefix + "n", prefix + "l"])
        await pool.shutdown()
    }

    @Test func thousandPipelinedCommandsOnOneConnection() async throws {
        let pool = try await connectedPool(configuration(sharedRedisURL!, poolSize: 1))
        let key = prefix + "counter"
        // Sent from one thread, in order: INCR replies must be 1...1000 in that same order.
        let futures = (0..<1000).map { _ in pool.send(["INCR", key]) }
        var got: [Int64] = []
        for f in futures { got.append(try await f.get().integer ?? -1) }
        #expect(got == Array(1...1000))
        // Concurrent senders: each gets its own echo back.
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<1000 {
                group.addTask { try await pool.send(["ECHO", "v\(i)"]) == .bulkString(Array("v\(i)".utf8)) }
            }
            for try await ok in group { #expect(ok) }
        }
        _ = try await pool.send(["DEL", key])
        await pool.shutdown()
    }

    @Test func authAndSelectOnEveryConnection() async throws {
        let server = try await RedisServer(extraArguments: ["--requirepass", "adm1n"])
        defer { server.stop() }
        // Password only, db 3.
        let pool = try await connectedPool(configuration("redis://:adm1n@127.0.0.1:\(server.port)/3", poolSize: 2))
        for i in 0..<4 { _ = try await pool.send(["SET", "k\(i)", "db3"]) } // both connections
        #expect(try await pool.send(["CLIENT", "INFO"]).string?.contains(" db=3 ") == true)
        // An ACL user with a password that needs percent-encoding, db 0.
        #expect(try await pool.send(["ACL", "SETUSER", "gw", "on", ">p@ss:w/rd", "~*", "&*", "+@all"]) == .simpleString("OK"))
        let user = try await connectedPool(configuration("redis://gw:p%40ss%3Aw%2Frd@127.0.0.1:\(server.port)", poolSize: 1))
        #expect(try await user.send(["ACL", "WHOAMI"]).string == "gw")
        #expect(try await user.send(["GET", "k0"]) == .null) // db 0
        _ = try await user.send(["SELECT", "3"])
        #expect(try await user.send(["GET", "k0"]).string == "db3")
        // The selected db is restored on reconnect: kill the clients, the pool reconnects with SELECT 3.
        _ = try await user.send(["CLIENT", "KILL", "USER", "default"])
        try await waitUntil { pool.connectedCount == 2 }
        try await waitUntil {
            (try? await pool.send(["GET", "k1"]).string) == "db3"
        }
        // Wrong password: no connection ever comes up, commands fail at once.
        var bad = try configuration("redis://:wrong@127.0.0.1:\(server.port)", poolSize: 1)
        bad.reconnectBackoffMax = .milliseconds(20)
        let badPool = RedisConnectionPool(configuration: bad, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        try await Task.sleep(for: .milliseconds(100))
        #expect(badPool.connectedCount == 0)
        let e = await errorOf { try await badPool.send(["PING"]) }
        #expect(e as? RedisError == .notConnected)
        await badPool.shutdown()
        await user.shutdown()
        await pool.shutdown()
    }

    @Test func commandTimeoutRecyclesTheConnection() async throws {
        try await withOwnEventLoop { group in
            let server = try await RedisServer()
            defer { server.stop() }
            let pool = try await connectedPool(configuration(server.url, poolSize: 1, commandTimeout: .milliseconds(50)), group: group)
            #expect(try await pool.send(["PING"]) == .simpleString("PONG"))
            var behind: EventLoopFuture<RESPValue>?
            let (result, elapsed) = await timedFuture {
                let sleeping: EventLoopFuture<RESPValue> = pool.send(["DEBUG", "SLEEP", "1"])
                // Queued behind it with a generous timeout: fails with it (the connection is dropped).
                behind = pool.send(["PING"], timeout: .seconds(5))
                return sleeping
            }
            #expect(result.error as? RedisError == .timeout)
            // The 50 ms command timeout answered, not Redis (asleep for 1 s).
            #expect(elapsed >= .milliseconds(45) && elapsed < .milliseconds(900), "timed out after \(elapsed)")
            let behindError = await errorOf { try await behind!.get() }
            #expect(behindError as? RedisError == .timeout)
            // Recycled: a new connection comes up and works once Redis is responsive again (a late
            // reply to DEBUG SLEEP is never taken for the answer to a later command).
            try await waitUntil(timeout: .seconds(3)) { (try? await pool.send(["ECHO", "after"]).string) == "after" }
            #expect(try await pool.send(["ECHO", "again"]).string == "again")
            await pool.shutdown()
        }
    }

    /// Commands queued in the tick the connection goes are failed, not lost: their batch is
    /// written at the end of the tick, after the pool has shut the connection.
    @Test func commandsQueuedAsTheConnectionGoesAreFailed() async throws {
        try await withOwnEventLoop { group in
            let pool = try await connectedPool(configuration(sharedRedisURL!), group: group)
            let queued = try await group.next().submit { () -> [EventLoopFuture<RESPValue>] in
                let futures = (0..<3).map { _ in pool.send(["PING"]) }
                _ = pool.shutdown()
                return futures
            }.get()
            let answered = Mutex(0)
            for f in queued { f.whenComplete { _ in answered.withLock { $0 += 1 } } }
            try await waitUntil(timeout: .seconds(3), "every queued command answered") { answered.withLock { $0 } == queued.count }
            for f in queued {
                #expect(await errorOf { try await f.get() } as? RedisError == .connectionClosed)
            }
        }
    }

    @Test func redisKilledThenRestarted() async throws {
        try await withOwnEventLoop { group in
            let server = try await RedisServer()
            defer { server.stop() }
            let pool = try await connectedPool(configuration(server.url, poolSize: 2), group: group)
            #expect(try await pool.send(["PING"]) == .simpleString("PONG"))
            server.kill()
            // Every command fails, and fast: no waiting for a connection.
            try await waitUntil { pool.connectedCount == 0 }
            for _ in 0..<50 {
                let (r, t) = await timedFuture { pool.send(["PING"]) }
                #expect(r.error as? RedisError == .notConnected)
                // Far below the 500 ms connect timeout: nothing waits for a connection.
                #expect(t < .milliseconds(250), "failure took \(t)")
            }
            try await server.start()
            // Background reconnect (backoff capped at 100 ms here).
            try await waitUntil(timeout: .seconds(2)) { pool.connectedCount == 2 }
            // The first command after recovery opens no connection of its own (the reconnect
            // happened in the background): checked by what Redis saw, not by a time.
            let connectionsBefore = try await connectionsReceived(pool)
            #expect(try await pool.send(["PING"]).get() == .simpleString("PONG"))
            #expect(try await connectionsReceived(pool) == connectionsBefore)
            await pool.shutdown()
        }
    }

    @Test func shutdownFailsLaterCommands() async throws {
        let pool = try await connectedPool(configuration(sharedRedisURL!, poolSize: 2))
        await pool.shutdown()
        let e = await errorOf { try await pool.send(["PING"]) }
        #expect(e as? RedisError == .poolClosed)
        #expect(pool.connectedCount == 0)
    }
}
