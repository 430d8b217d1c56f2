import Foundation
import Testing
@testable import Gateway

/// A temporary directory holding dummy certificate/key files, removed on deinit.
final class ConfigFixture {
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "gateway-config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory + "/certs", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/keys", withIntermediateDirectories: true)
        for file in ["certs/dev.crt", "certs/dev.key", "keys/rs1.pem"] {
            try Data("dummy\n".utf8).write(to: URL(fileURLWithPath: directory + "/" + file))
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func parse(_ yaml: String, environment: [String: String] = [:]) throws(ConfigErrors) -> GatewayConfig {
        try ConfigLoader.parse(yaml: yaml, environment: environment, baseDirectory: directory)
    }

    /// Every error line for `yaml`; records a test failure if it parses.
    func errors(_ yaml: String, environment: [String: String] = [:],
                sourceLocation: SourceLocation = #_sourceLocation) -> [String] {
        do {
            _ = try parse(yaml, environment: environment)
            Issue.record("expected validation errors, but the config was accepted", sourceLocation: sourceLocation)
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    /// Expects `line` among the errors.
    func expectError(_ yaml: String, _ line: String, environment: [String: String] = [:],
                     sourceLocation: SourceLocation = #_sourceLocation) {
        let found = errors(yaml, environment: environment, sourceLocation: sourceLocation)
        #expect(found.contains(line), "missing error line \(line); got:\n\(found.joined(separator: "\n"))",
                sourceLocation: sourceLocation)
    }
}

/// The smallest valid file; tests append sections to it.
let minimalYAML = """
listeners:
  - name: main
    address: 127.0.0.1:0

"""

/// The shipped development default, found relative to this source file (Tests/GatewayTests → package root).
let shippedConfigPath = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("gateway.yaml").path
