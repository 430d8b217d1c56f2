import Foundation
import NIOCore
import NIOPosix
import RedisClient
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The redis-server of `scripts/with-redis.sh` (`make test` always sets it). Tests that kill,
/// block or reconfigure a server start their own `RedisServer` instead.
let sharedRedisURL: String? = ProcessInfo.processInfo.environment["REDIS_TEST_URL"]
let haveRedis = sharedRedisURL != nil

struct MissingRedis: Error, CustomStringConvertible {
    var description: String { "CI=true but REDIS_TEST_URL is not set: run through scripts/with-redis.sh" }
}

extension Trait where Self == ConditionTrait {
    /// Runs the suite when the shared redis-server is there; skips it otherwise, except under
    /// `CI=true` (`.ci/run`), where skipped tests would let a broken CI image pass while testing less.
    static var needsRedis: Self {
        .enabled("needs REDIS_TEST_URL: run through scripts/with-redis.sh") {
            if haveRedis { return true }
            if ["true", "1"].contains(ProcessInfo.processInfo.environment["CI"]?.lowercased() ?? "") { throw MissingRedis() }
            return false
        }
    }
}

/// A loopback TCP port nobody listens on right now.
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    precondition(fd >= 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
            bind(fd, sa, len) == 0 && getsockname(fd, sa, &len) == 0
        }
    }
    precondition(ok)
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
func isListening(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
}

/// A redis-server owned by one test: started on a free port with Foundation `Process`, killed
/// by PID (SIGKILL, like a crash) in `kill()` / `stop()`, restartable on the same port.
final class RedisServer: @unchecked Sendable {
    let port: Int
    let extraArguments: [String]
    private var process: Process?

    init(extraArguments: [String] = []) async throws {
        port = freePort()
        self.extraArguments = extraArguments
        try await start()
    }

    var url: String { "redis://127.0.0.1:\(port)" }

    func start() async throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        p.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--daemonize", "no", "--enable-debug-command", "local"] + extraArguments
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
        for _ in 0..<400 where !isListening(port) { try await Task.sleep(for: .milliseconds(5)) }
        guard isListening(port) else { throw ServerDidNotStart() }
    }

    /// SIGKILL by PID and wait for the process to go.
    func kill() {
        guard let p = process else { return }
        Glibc.kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        process = nil
    }

    func stop() { kill() }

    /// SIGSTOP by PID, returning once the kernel shows the process stopped: from then on Redis
    /// takes no command and answers none, however long the test itself is kept off-CPU (a
    /// `CLIENT PAUSE` runs out on its own, and did while a loaded CI machine starved the test).
    func freeze() async throws {
        guard let p = process else { return }
        Glibc.kill(p.processIdentifier, SIGSTOP)
        let stat = "/proc/\(p.processIdentifier)/stat"
        for _ in 0..<400 {
            // The state is the field after the parenthesised command name.
            if let text = try? String(contentsOfFile: stat, encoding: .utf8),
               let close = text.lastIndex(of: ")"),
               text[text.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("T") { return }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw ServerDidNotStop()
    }

    /// SIGCONT: undoes `freeze()`.
    func thaw() {
        guard let p = process else { return }
        Glibc.kill(p.processIdentifier, SIGCONT)
    }

    deinit { kill() }

    struct ServerDidNotStart: Error {}
    struct ServerDidNotStop: Error {}
}

func configuration(_ url: String, poolSize: Int = 1, commandTimeout: TimeAmount = .seconds(2)) throws -> RedisConfiguration {
    var c = try RedisConfiguration(url: url)
    c.poolSize = poolSize
    c.commandTimeout = commandTimeout
    c.connectTimeout = .milliseconds(500)
    c.reconnectBackoffInitial = .milliseconds(10)
    c.reconnectBackoffMax = .milliseconds(100)
    return c
}

/// A pool with every connection up (waits up to `timeout`).
func connectedPool(
    _ config: RedisConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
    timeout: Duration = .seconds(5)
) async throws -> RedisConnectionPool {
    let pool = RedisConnectionPool(configuration: config, eventLoopGroup: group)
    try await waitUntil(timeout: timeout) { pool.connectedCount == config.poolSize }
    return pool
}

struct TimedOutWaiting: Error { var what: String }

/// Polls `condition` every 5 ms until it holds or `timeout` passes.
func waitUntil(timeout: Duration = .seconds(5), _ what: String = "condition", _ condition: () async throws -> Bool) async throws {
    let clock = ContinuousClock()
    let end = clock.now + timeout
    while clock.now < end {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(5))
    }
    if try await condition() { return }
    throw TimedOutWaiting(what: what)
}

/// Wall time of `body`, and its result.
func timed<T>(_ body: () async throws -> T) async rethrows -> (T, Duration) {
    let clock = ContinuousClock()
    let start = clock.now
    let r = try await body()
    return (r, clock.now - start)
}

func errorOf<T>(_ body: () async throws -> T) async -> (any Error)? {
    do { _ = try await body(); return nil } catch { return error }
}

/// How long `make()`'s future took, measured on its event loop (the moment it completed), so the
/// figure excludes how long the test task waited to be resumed on a busy machine.
func timedFuture<T: Sendable>(_ make: () -> EventLoopFuture<T>) async -> (Result<T, any Error>, Duration) {
    let start = NIODeadline.now()
    let f = make()
    let end = try! await f.map { _ in NIODeadline.now() }.recover { _ in NIODeadline.now() }.get()
    let result: Result<T, any Error>
    do { result = .success(try await f.get()) } catch { result = .failure(error) }
    return (result, .nanoseconds((end - start).nanoseconds))
}

extension Result {
    var error: Failure? { if case .failure(let e) = self { e } else { nil } }
}

/// Runs `body` with its own one-thread event loop group: timing assertions then measure this
/// test's loop, not the shared singleton that every other parallel test keeps busy.
func withOwnEventLoop<T>(_ body: (any EventLoopGroup) async throws -> T) async throws -> T {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    do {
        let r = try await body(group)
        try await group.shutdownGracefully()
        return r
    } catch {
        try? await group.shutdownGracefully()
        throw error
    }
}

/// Redis's `total_connections_received`: how many connections the server has accepted so far.
func connectionsReceived(_ pool: RedisConnectionPool) async throws -> Int {
    let info = try await pool.send(["INFO", "stats"]).string ?? ""
    let line = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("total_connections_received:") }
    return Int(line?.split(separator: ":").last ?? "") ?? -1
}
