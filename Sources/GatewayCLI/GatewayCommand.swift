import ArgumentParser
import Dispatch
import Foundation
import Gateway

@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "BarberPro edge gateway: TLS, HTTP/2 and HTTP/1.1, routing, edge policies and proxying to the booking services.",
        subcommands: [Run.self, Validate.self, Token.self, Bench.self],
        defaultSubcommand: Run.self
    )
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Path to gateway.yaml.")
    var config: String = "gateway.yaml"
}

/// Loads and fully validates a config, printing every error as `path.to.key: reason`.
func loadValidated(_ path: String) -> (GatewayConfig, String)? {
    do {
        let config = try ConfigLoader.load(path: path)
        try GatewayBuilder.validateForStartup(config)
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return (config, text)
    } catch let errors as ConfigErrors {
        for error in errors.errors { FileHandle.standardError.write(Data("\(error)\n".utf8)) }
        return nil
    } catch {
        FileHandle.standardError.write(Data("\(error)\n".utf8))
        return nil
    }
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Parse and validate a config; exit 0 when valid, 1 otherwise.")
    @OptionGroup var options: ConfigOption

    func run() throws {
        guard loadValidated(self.options.config) != nil else { throw ExitCode(1) }
        print("\(self.options.config): valid")
    }
}

struct Token: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mint an HS256 test token (for testers) and print it.",
        discussion: """
            iss/aud default to barberpro-auth/barberpro-api, or to the jwt section of --config FILE. \
            With --config and no --secret, the first HS256 key of that section signs the token (its kid is used). \
            The secret must be at least 32 bytes (RFC 7518 §3.2).
            """
    )
    @Option(name: .long, help: "HMAC secret (at least 32 bytes).") var secret: String?
    @Option(name: .long, help: "Subject (sub), forwarded as X-User-Id.") var sub: String
    @Option(name: .long, help: "Role claim, forwarded as X-User-Role.") var role: String?
    @Option(name: .long, help: "Lifetime, e.g. 15m, 1h, 7d (at most jwt.max_lifetime to be accepted).") var ttl: String = "1h"
    @Option(name: .long, help: "Key id (kid header).") var kid: String?
    @Option(name: .long, help: "Issuer (iss).") var iss: String?
    @Option(name: .long, help: "Audience (aud).") var aud: String?
    @Option(name: .long, help: "Take iss/aud (and the key when --secret is absent) from this gateway.yaml.") var config: String?
    @Option(name: .long, help: "Extra claim PATH=VALUE (repeatable; dotted paths nest; VALUE is JSON if it parses, else a string).") var claim: [String] = []
    @Option(name: .long, help: "OAuth scope (repeatable; joined with spaces into the scope claim).") var scope: [String] = []

    func run() throws {
        var jwt: JWTConfig? = nil
        if let path = self.config {
            guard let (loaded, _) = loadValidated(path) else { throw ExitCode(1) }
            guard let section = loaded.jwt else {
                FileHandle.standardError.write(Data("gateway token: \(path) has no jwt section\n".utf8))
                throw ExitCode(1)
            }
            jwt = section
        }
        var request = TestTokenRequest(
            secret: self.secret, subject: self.sub, role: self.role, ttl: self.ttl, kid: self.kid,
            issuer: self.iss, audience: self.aud
        )
        request.claims = self.claim
        request.scopes = self.scope
        do {
            print(try TestTokens.mint(request, config: jwt))
        } catch {
            FileHandle.standardError.write(Data("gateway token: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve traffic until SIGTERM/SIGINT, then drain and exit 0.")
    @OptionGroup var options: ConfigOption

    func run() async throws {
        guard let (config, text) = loadValidated(self.options.config) else { throw ExitCode(1) }
        let server: GatewayServer
        do {
            server = try GatewayBuilder.makeServer(config: config, configText: text, configPath: self.options.config)
            try await server.start()
        } catch {
            FileHandle.standardError.write(Data("gateway: \(error)\n".utf8))
            throw ExitCode(1)
        }
        for (name, address) in server.boundAddresses {
            say("gateway: listener \(name) on \(address)")
        }
        let reloads = ReloadTriggers(server: server, path: self.options.config)
        reloads.start()
        let signal = await waitForTerminationSignal()
        reloads.stop()
        // On stderr: stdout may be a pipe its reader stopped reading, and a shutdown must not wait on it.
        FileHandle.standardError.write(Data("gateway: \(signal) received, draining\n".utf8))
        await server.drain()
        FileHandle.standardError.write(Data("gateway: stopped\n".utf8))
    }
}

/// Unbuffered, so supervisors and tests see each line at once.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// Suspends until SIGTERM or SIGINT; the default handlers are disabled so the drain can run.
func waitForTerminationSignal() async -> String {
    await withCheckedContinuation { continuation in
        let queue = DispatchQueue(label: "gateway.signals")
        let resumed = SignalLatch()
        var sources: [DispatchSourceSignal] = []
        for (number, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT")] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler {
                if resumed.fire() { continuation.resume(returning: name) }
            }
            source.resume()
            sources.append(source)
        }
        SignalLatch.keepAlive(sources)
    }
}

final class SignalLatch: @unchecked Sendable {
    // Only touched on the signal queue.
    private var fired = false
    nonisolated(unsafe) private static var retained: [DispatchSourceSignal] = []

    func fire() -> Bool {
        if self.fired { return false }
        self.fired = true
        return true
    }

    static func keepAlive(_ sources: [DispatchSourceSignal]) { retained = sources }
}

/// SIGHUP and changes of the config file both reload it (validated whole; refused configs leave
/// the running one in place). The file is polled once a second: simple, and it also catches a
/// Kubernetes ConfigMap symlink swap that inotify on the old inode would miss.
final class ReloadTriggers: @unchecked Sendable {
    // Only touched on `queue`.
    private let server: GatewayServer
    private let path: String
    private let queue = DispatchQueue(label: "gateway.reload")
    private var signalSource: DispatchSourceSignal?
    private var timer: DispatchSourceTimer?
    private var lastStamp: String?

    init(server: GatewayServer, path: String) {
        self.server = server
        self.path = path
    }

    func start() {
        self.queue.sync {
            self.lastStamp = self.stamp()
            signal(SIGHUP, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: self.queue)
            source.setEventHandler { [weak self] in self?.trigger("SIGHUP") }
            source.resume()
            self.signalSource = source
            let timer = DispatchSource.makeTimerSource(queue: self.queue)
            timer.schedule(deadline: .now() + 1, repeating: 1)
            timer.setEventHandler { [weak self] in
                guard let self else { return }
                let stamp = self.stamp()
                if stamp != self.lastStamp {
                    self.lastStamp = stamp
                    self.trigger("config file changed")
                }
            }
            timer.resume()
            self.timer = timer
        }
    }

    func stop() {
        self.queue.sync {
            self.signalSource?.cancel()
            self.timer?.cancel()
        }
    }

    private func stamp() -> String? {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: self.path) else { return nil }
        let date = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        let size = (attributes[.size] as? Int) ?? 0
        return "\(date)-\(size)"
    }

    /// Validates on this queue; the server applies reloads one at a time, in order, so a SIGHUP
    /// during a reload is queued behind it rather than lost.
    private func trigger(_ why: String) {
        FileHandle.standardError.write(Data("gateway: \(why): reloading \(self.path)\n".utf8))
        self.server.reloadConfigFile()
    }
}
