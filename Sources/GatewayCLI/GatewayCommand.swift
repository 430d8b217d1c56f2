import ArgumentParser
import CBuildInfo
import Foundation
import Gateway

@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "BarberPro edge gateway: TLS, HTTP/2 and HTTP/1.1, routing, edge policies and proxying to the booking services.",
        version: BuildInfo.versionText(commit: String(cString: gateway_build_commit())),
        subcommands: [Run.self, Validate.self, Token.self, Bench.self],
        defaultSubcommand: Run.self
    )
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Path to gateway.yaml (default: $GATEWAY_CONFIG, else gateway.yaml).")
    var config: String = ProcessInfo.processInfo.environment["GATEWAY_CONFIG"] ?? "gateway.yaml"

    @Option(name: .long, help: "Operator log level (trace, debug, info, notice, warning, error, critical); overrides log.level.")
    var logLevel: String?

    func validate() throws {
        if let level = self.logLevel, OperatorLogLevel(rawValue: level.lowercased()) == nil {
            throw ValidationError("--log-level: expected one of \(OperatorLogLevel.allCases.map(\.rawValue).joined(separator: ", ")), got '\(level)'")
        }
    }
}

/// Loads and fully validates a config, printing every error as `path.to.key: reason (line N)` and
/// every warning (certificates close to expiry) the same way. Installs the operator log first, from
/// the config's `log` section when it parses, so even its errors come out in the chosen format.
func loadValidated(_ options: ConfigOption) -> (GatewayConfig, String)? {
    let path = options.config
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    let pinned = options.logLevel.flatMap { OperatorLogLevel(rawValue: $0.lowercased()) }
    let loaded = Result { try ConfigLoader.load(path: path) }
    let parsed = try? loaded.get()
    OperatorLog.bootstrap(
        level: pinned ?? parsed?.log.level ?? .info, format: parsed?.log.format ?? .text, pinLevel: pinned != nil
    )
    let locate = { (error: ConfigError) -> String in
        ConfigLineLocator.line(for: error.path, in: text).map { "\(error) (line \($0))" } ?? "\(error)"
    }
    do {
        let config = try loaded.get()
        try GatewayBuilder.validateForStartup(config)
        for warning in GatewayBuilder.strictValidation(config).warnings { OperatorLog.logger.warning("\(locate(warning))") }
        return (config, text)
    } catch let errors as ConfigErrors {
        for error in errors.errors { FileHandle.standardError.write(Data("\(locate(error))\n".utf8)) }
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
        guard loadValidated(self.options) != nil else { throw ExitCode(1) }
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
            guard let (loaded, _) = loadValidated(try ConfigOption.parse(["--config", path])) else { throw ExitCode(1) }
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
        // A SIGTERM before the service group traps it stops a process that serves nothing yet (the
        // default action); a SIGHUP then would too, but a reload request before start-up is moot.
        signal(SIGHUP, SIG_IGN)
        guard let (config, text) = loadValidated(self.options) else { throw ExitCode(1) }
        let server: GatewayServer
        do {
            server = try GatewayBuilder.makeServer(config: config, configText: text, configPath: self.options.config)
            try await server.start()
        } catch {
            OperatorLog.logger.critical("\(error)")
            throw ExitCode(1)
        }
        // Announced once the signals are trapped, so whoever waits for these lines may stop the
        // gateway at once and get a drain.
        try await server.runUntilSignalled(configPath: self.options.config) {
            for (name, address) in server.boundAddresses {
                say("gateway: listener \(name) on \(address)")
            }
        }
    }
}

/// Unbuffered, so supervisors and tests see each line at once.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
