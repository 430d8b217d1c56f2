// EVALSHA rate-limit decisions per second through RedisClient with a fixed number in flight —
// compare with `redis-benchmark -P <inflight> EVALSHA …` on the same server or cluster
// (benchmarks/redis-evalsha.sh and benchmarks/redis-cluster-evalsha.sh run both). Release only.
//
//   redis-bench <redis-url> [requests=200000] [inflight=128]
//   redis-bench cluster:<host:port>[,<host:port>…] [requests] [inflight per master]
//
// In cluster mode the keys carry 64 different hash tags, so every master gets its share, one
// pipelined connection per master (what `redis-benchmark --cluster -c <masters>` opens).
import Foundation
import NIOCore
import NIOPosix
import RateLimiter
import RedisClient

let args = CommandLine.arguments
let usage = "usage: redis-bench redis://host:port|cluster:host:port[,host:port…] [requests] [inflight]\n"
guard args.count >= 2 else {
    FileHandle.standardError.write(Data(usage.utf8))
    exit(2)
}
let total = args.count > 2 ? Int(args[2]) ?? 200_000 : 200_000
var inflight = args.count > 3 ? Int(args[3]) ?? 128 : 128

let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let client: any RedisCommandSender
var tags = ["bench"]
if args[1].hasPrefix("cluster:") {
    var config = RedisConfiguration(host: "", port: 0)
    config.poolSize = 1
    config.commandTimeout = .seconds(5)
    let seeds = args[1].dropFirst("cluster:".count).split(separator: ",").map { s -> (host: String, port: Int) in
        let colon = s.lastIndex(of: ":")!
        return (String(s[..<colon]), Int(s[s.index(after: colon)...])!)
    }
    let cluster = RedisClusterClient(configuration: config, seeds: seeds, eventLoopGroup: group)
    while !cluster.hasSlotMap || cluster.nodeStates.contains(where: { ($0.slots ?? 0) > 0 && $0.connections == 0 }) {
        usleep(1000)
    }
    let masters = cluster.nodeStates.filter { ($0.slots ?? 0) > 0 }.count
    inflight *= masters
    tags = (0..<64).map { "bench\($0)" }
    client = cluster
} else {
    guard var config = try? RedisConfiguration(url: args[1]) else {
        FileHandle.standardError.write(Data(usage.utf8))
        exit(2)
    }
    config.poolSize = 1
    config.commandTimeout = .seconds(5)
    let pool = RedisConnectionPool(configuration: config, eventLoopGroup: group)
    while pool.connectedCount < 1 { usleep(1000) }
    client = pool
}

let policy = PolicySpec(name: "bench", limit: 1_000_000_000, windowSeconds: 60)
var sha = ""
for tag in tags {  // every master needs the script (one tag per master would do; 64 is simple)
    sha = try client.send(["SCRIPT", "LOAD", RedisRateLimitScript.source], key: "{\(tag)}").wait().string!
}
let commands = tags.map { tag in
    let (keys, arguments) = RedisRateLimitScript.keysAndArguments([(policy, "gw:rl:{\(tag)}:bench")])
    return (keys[0], ["EVALSHA", sha, String(keys.count)] + keys + arguments)
}
let (_, arguments) = RedisRateLimitScript.keysAndArguments([(policy, "k")])
// redis-benchmark --cluster replaces "{tag}" with a tag of each master.
let printedKey = tags.count == 1 ? commands[0].0 : "gw:rl:{tag}:bench"
print("redis-benchmark equivalent: EVALSHA \(sha) 1 \(printedKey) '' \(arguments.dropFirst().joined(separator: " "))")

/// Keeps `inflight` commands outstanding from the event loop until `total` have been answered.
final class Driver: @unchecked Sendable { // touched on the one event loop only
    var sent = 0, done = 0, allowed = 0
    let finished: EventLoopPromise<Void>
    init(_ p: EventLoopPromise<Void>) { finished = p }
    func fire() {
        let (key, command) = commands[sent % commands.count]
        sent += 1
        client.send(command, key: key).whenComplete { result in
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
try client.shutdown().wait()
try group.syncShutdownGracefully()
