internal import Yams

/// Defaults of the operations keys (`timeouts.drain_delay`, `log.level`, `log.format`).
public enum OperationsDefaults {
    /// Long enough for a load balancer polling readiness every 1–2 s to see the 503 a few times.
    public static let drainDelay: Duration = .seconds(5)
}

/// `log.level` (and `--log-level`): the least severe operator message written. Same names as
/// swift-log's levels.
public enum OperatorLogLevel: String, Sendable, Equatable, CaseIterable {
    case trace, debug, info, notice, warning, error, critical
}

/// `log.format`: operator messages as plain lines or as one JSON object per line.
public enum OperatorLogFormat: String, Sendable, Equatable, CaseIterable {
    case text, json
}

extension GatewayConfig {
    /// `timeouts.drain_delay`: zero turns the delay off; at most 5 minutes (a stop longer than
    /// that is a stuck deploy).
    static func decodeDrainDelay(_ m: ConfigMapping, reader r: ConfigReader) -> Duration? {
        m["drain_delay"].flatMap { r.duration($0, at: m.path("drain_delay"), minimum: .zero, maximum: .seconds(300)) }
    }

    static func decodeOperatorLog(_ m: ConfigMapping, reader r: ConfigReader, into log: inout LogConfig) {
        if let node = m["level"], let text = r.text(node, at: m.path("level")) {
            if let level = OperatorLogLevel(rawValue: text.lowercased()) {
                log.level = level
            } else {
                r.fail(m.path("level"), Self.choiceError(text, OperatorLogLevel.allCases.map(\.rawValue)))
            }
        }
        if let node = m["format"], let text = r.text(node, at: m.path("format")) {
            if let format = OperatorLogFormat(rawValue: text.lowercased()) {
                log.format = format
            } else {
                r.fail(m.path("format"), Self.choiceError(text, OperatorLogFormat.allCases.map(\.rawValue)))
            }
        }
    }

    private static func choiceError(_ value: String, _ choices: [String]) -> String {
        if let suggestion = closestMatch(to: value.lowercased(), in: choices) {
            return "unknown value '\(value)' (did you mean '\(suggestion)'?)"
        }
        return "expected one of \(choices.joined(separator: ", ")), got '\(value)'"
    }
}
