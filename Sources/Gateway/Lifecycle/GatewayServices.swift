import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif
import ServiceLifecycle
import UnixSignals

/// The listeners and everything tied to a config snapshot (health checks, the JWKS refresher) as
/// one service: it serves until the group's graceful shutdown (SIGTERM/SIGINT), then drains
/// (`timeouts.drain_delay`, then `timeouts.drain`). The server must already be started, so bind
/// errors surface before the group runs.
public struct GatewayService: Service {
    let server: GatewayServer
    /// Called when the group runs: its signal handlers are installed by then.
    let onRunning: @Sendable () -> Void

    public init(server: GatewayServer, onRunning: @escaping @Sendable () -> Void = {}) {
        self.server = server
        self.onRunning = onRunning
    }

    public func run() async throws {
        self.onRunning()
        // Cancellation (not graceful shutdown) also ends the wait; the drain runs either way.
        try? await gracefulShutdown()
        GatewayLog.info("shutdown requested, draining")
        await self.server.drain()
        GatewayLog.info("stopped")
    }
}

/// Config reload triggers as a service: SIGHUP (through `UnixSignalsSequence`) and changes of the
/// config file, polled once a second (simple, and it also catches a Kubernetes ConfigMap symlink
/// swap that inotify on the old inode would miss). Reloads are validated whole; a refused config
/// leaves the running one in place.
public struct ConfigWatcherService: Service {
    let server: GatewayServer
    let path: String

    public init(server: GatewayServer, path: String) {
        self.server = server
        self.path = path
    }

    public func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let server = self.server, path = self.path
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in hangups {
                        GatewayLog.info("SIGHUP: reloading \(path)")
                        await Self.reload(server)
                    }
                }
                group.addTask {
                    var last = Self.stamp(path)
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(1))
                        let stamp = Self.stamp(path)
                        if stamp != last {
                            last = stamp
                            GatewayLog.info("config file changed: reloading \(path)")
                            await Self.reload(server)
                        }
                    }
                }
                await group.waitForAll()
            }
        }
    }

    /// Reading and validating the file blocks; keep it off the cooperative pool's few threads.
    private static func reload(_ server: GatewayServer) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                server.reloadConfigFile()
                continuation.resume()
            }
        }
    }

    /// `stat` of the file (through symlinks, so a ConfigMap swap shows as a new inode). Not
    /// FileManager's attributes: those look the owner up in /etc/passwd on every poll.
    private static func stamp(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return "\(info.st_ino)-\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)-\(info.st_size)"
    }
}

extension GatewayServer {
    /// Runs the server and its config watcher in a `ServiceGroup` until SIGTERM or SIGINT, then
    /// drains. Call after `start()`.
    public func runUntilSignalled(configPath: String, onRunning: @escaping @Sendable () -> Void = {}) async throws {
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: GatewayService(server: self, onRunning: onRunning)),
                    // Stopped first (services stop in reverse order): no reload during the drain.
                    .init(service: ConfigWatcherService(server: self, path: configPath)),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: OperatorLog.logger
            )
        )
        try await group.run()
    }
}
