import ArgumentParser
import Dispatch
import Foundation
import Gateway

@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "BarberPro edge gateway: TLS, HTTP/1.1, routing and proxying to the booking services.",
        subcommands: [Run.self, Validate.self, Bench.self],
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

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve traffic until SIGTERM/SIGINT, then drain and exit 0.")
    @OptionGroup var options: ConfigOption

    func run() async throws {
        guard let (config, text) = loadValidated(self.options.config) else { throw ExitCode(1) }
        let server: GatewayServer
        do {
            server = try GatewayBuilder.makeServer(config: config, configText: text)
            try await server.start()
        } catch {
            FileHandle.standardError.write(Data("gateway: \(error)\n".utf8))
            throw ExitCode(1)
        }
        for (name, address) in server.boundAddresses {
            say("gateway: listener \(name) on \(address)")
        }
        let signal = await waitForTerminationSignal()
        say("gateway: \(signal) received, draining")
        await server.drain()
        say("gateway: stopped")
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
