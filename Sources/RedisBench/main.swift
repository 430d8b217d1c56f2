// EVALSHA rate-limit decisions per second through RedisClient with a fixed number in flight on
// one connection — compare with `redis-benchmark -c 1 -P <inflight> EVALSHA …` on the same
// server (scripts/bench-redis.sh runs both). Release build only.
//
//   redis-bench <redis-url> [requests=200000] [inflight=128]
import Foundation
import NIOCore
import NIOPosix
import RateLimiter
import RedisClient

let args = CommandLine.arguments
guard args.count >= 2, var config = try? RedisConfiguration(url: args[1]) else {
    FileHandle.standardError.write(Data("usage: redis-bench redis://host:port [requests] [inflight]\n".utf8))
    exit(2)
}
let total = args.count > 2 ? Int(args[2]) ?? 200_000 : 200_000
let inflight = args.count > 3 ? Int(args[3]) ?? 128 : 128
config.poolSize = 1
config.commandTimeout = .seconds(5)

let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let pool = RedisConnectionPool(configuration: config, eventLoopGroup: group)
while pool.connectedCount < 1 { usleep(1000) }

let sha = try pool.send(["SCRIPT", "LOAD", RedisRateLimitScript.source]).wait().string!
let policy = PolicySpec(name: "bench", limit: 1_000_000_000, windowSeconds: 60)
let (keys, arguments) = RedisRateLimitScript.keysAndArguments([(policy, "gw:rl:{bench}:bench")])
let command = ["EVALSHA", sha, String(keys.count)] + keys + arguments
print("redis-benchmark equivalent: EVALSHA \(sha) 1 \(keys[0]) '' \(arguments.dropFirst().joined(separator: " "))")

/// Keeps `inflight` commands outstanding from the event loop until `total` have been answered.
final class Driver: @unchecked Sendable { // touched on the pool's one event loop only
    var sent = 0, done = 0, allowed = 0
    let finished: EventLoopPromise<Void>
    init(_ p: EventLoopPromise<Void>) { finished = p }
    func fire() {
        sent += 1
        pool.send(command).whenComplete { result in
            self.done += 1
            if case .success(let v) = result, v.array?.first?.array?.first == .integer(1) { self.allowed += 1 }
            if self.sent < total { self.fire() }
            if self.done == total { self.finished.succeed() }
        }
    }
}
let loop = group.next()
let driver = Driver(loop.makePromise())
let start = DispatchTime.now()
loop.execute { for _ in 0..<min(inflight, total) { driver.fire() } }
try driver.finished.futureResult.wait()
let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
print(String(format: "RedisClient: %d EVALSHA in %.3f s = %.0f decisions/s (%d in flight, %d allowed)",
             total, seconds, Double(total) / seconds, inflight, driver.allowed))
try pool.shutdown().wait()
try group.syncShutdownGracefully()
