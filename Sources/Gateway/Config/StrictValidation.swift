import Foundation
internal import Yams

/// What `gateway validate` (and `run`, before binding) finds beyond the config text: every
/// certificate pair loaded and checked against its key, and each certificate's expiry.
public struct StrictValidationReport: Sendable {
    public var errors: [ConfigError] = []
    /// Certificates that expire within `GatewayBuilder.expiryWarning`.
    public var warnings: [ConfigError] = []
}

extension GatewayBuilder {
    /// A certificate closer to its notAfter than this is reported as a warning.
    public static let expiryWarning: Duration = .seconds(14 * 86_400)

    /// Loads each certificate pair on its own (so every bad pair is reported, not only the first)
    /// and checks its expiry against `now`.
    public static func strictValidation(_ config: GatewayConfig, now: Date = Date()) -> StrictValidationReport {
        var report = StrictValidationReport()
        for (listenerIndex, listener) in config.listeners.enumerated() {
            guard let tls = listener.tls else { continue }
            for (index, pair) in tls.certificates.enumerated() {
                let path = "listeners[\(listenerIndex)].tls.certificates[\(index)]"
                let settings = TLSServerSettings(
                    certificates: [TLSCertificatePair(certificatePath: pair.cert, keyPath: pair.key)], alpnProtocols: []
                )
                let context: TLSServerContext
                do {
                    context = try TLSServerContext(settings: settings)
                } catch {
                    report.errors.append(ConfigError(path: path, reason: "\(error)"))
                    continue
                }
                let remaining = (context.notAfter.first ?? 0) - now.timeIntervalSince1970
                if remaining <= 0 {
                    report.errors.append(ConfigError(
                        path: path + ".cert", reason: "certificate \(pair.cert) expired \(Self.days(-remaining)) ago"
                    ))
                } else if remaining < Double(Self.expiryWarning.components.seconds) {
                    report.warnings.append(ConfigError(
                        path: path + ".cert", reason: "certificate \(pair.cert) expires in \(Self.days(remaining))"
                    ))
                }
            }
        }
        return report
    }

    private static func days(_ seconds: Double) -> String {
        let days = Int((seconds / 86_400).rounded())
        if days >= 1 { return days == 1 ? "1 day" : "\(days) days" }
        let hours = Int((seconds / 3_600).rounded())
        return hours == 1 ? "1 hour" : "\(hours) hours"
    }
}

/// Finds the line of a config path (`routes[2].upstream`, `listeners[0].tls.certificates[1].cert`)
/// in the YAML text, so errors can say where to look. Falls back to the deepest node it reached.
public enum ConfigLineLocator {
    public static func line(for path: String, in text: String) -> Int? {
        guard let root = try? Yams.compose(yaml: text) else { return nil }
        var node = root
        var line = Self.line(of: node)
        for component in Self.components(path) {
            switch component {
            case .key(let key):
                guard case .mapping(let mapping) = node,
                      let pair = mapping.first(where: { $0.key.string == key })
                else { return line }
                // An unknown or misplaced key: its own line, where the value may be a whole block.
                line = Self.line(of: pair.key) ?? line
                node = pair.value
            case .index(let index):
                guard case .sequence(let sequence) = node, index < sequence.count else { return line }
                node = sequence[index]
                line = Self.line(of: node) ?? line
            }
        }
        return line
    }

    private enum Component {
        case key(String)
        case index(Int)
    }

    private static func line(of node: Node) -> Int? { node.mark.map { $0.line } }

    /// `a.b[2].c` → key a, key b, index 2, key c. Upstream names are mapping keys (`upstreams.NAME`).
    private static func components(_ path: String) -> [Component] {
        var out: [Component] = []
        for part in path.split(separator: ".") {
            var rest = part[...]
            if let bracket = rest.firstIndex(of: "[") {
                if bracket > rest.startIndex { out.append(.key(String(rest[..<bracket]))) }
                rest = rest[bracket...]
                while rest.first == "[", let close = rest.firstIndex(of: "]") {
                    if let index = Int(rest[rest.index(after: rest.startIndex)..<close]) { out.append(.index(index)) }
                    rest = rest[rest.index(after: close)...]
                }
            } else {
                out.append(.key(String(rest)))
            }
        }
        return out
    }
}
