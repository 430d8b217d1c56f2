import Foundation
internal import Yams

/// Walks a composed YAML tree, turning nodes into typed values and recording every problem.
///
/// Each accessor returns `nil` after recording an error so callers can fall back to a default and
/// keep walking; `ConfigLoader` refuses the result if any error was recorded. `text` and
/// `nonEmptyString` never quote the value, so they are the ones used for secret-bearing keys
/// (`jwt.keys[].secret`, `redis.url`); typed accessors quote what they could not parse.
final class ConfigReader {
    private(set) var errors: [ConfigError] = []
    let environment: [String: String]
    let baseDirectory: String

    init(environment: [String: String], baseDirectory: String) {
        self.environment = environment
        self.baseDirectory = baseDirectory
    }

    func fail(_ path: String, _ reason: String) {
        errors.append(ConfigError(path: path, reason: reason))
    }

    // MARK: Structure

    /// `~`, `null` or nothing, written unquoted.
    static func isNull(_ node: Node) -> Bool {
        guard case .scalar(let scalar) = node, scalar.style == .plain || scalar.style == .any else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    private static func kind(_ node: Node) -> String {
        switch node {
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .scalar, .alias: "a value"
        }
    }

    /// A mapping whose keys are checked against `keys`; unknown ones are reported with a suggestion.
    func mapping(_ node: Node, at path: String, keys: [String]?) -> ConfigMapping? {
        guard case .mapping(let mapping) = node else {
            fail(path, "expected a mapping, got \(Self.kind(node))")
            return nil
        }
        var entries: [(key: String, value: Node)] = []
        for (keyNode, value) in mapping {
            guard case .scalar(let scalar) = keyNode, !Self.isNull(keyNode) else {
                fail(path, "keys must be plain strings")
                continue
            }
            let key = scalar.string
            if let keys, !keys.contains(key) {
                let childPath = ConfigMapping.join(path, key)
                if let suggestion = closestMatch(to: key, in: keys) {
                    fail(childPath, "unknown key (did you mean '\(suggestion)'?)")
                } else {
                    fail(childPath, "unknown key (expected one of: \(keys.joined(separator: ", ")))")
                }
                continue
            }
            entries.append((key, value))
        }
        return ConfigMapping(path: path, entries: entries)
    }

    func sequence(_ node: Node, at path: String) -> [Node]? {
        guard case .sequence(let sequence) = node else {
            fail(path, "expected a list, got \(Self.kind(node))")
            return nil
        }
        return Array(sequence)
    }

    /// The value of a key that must be present.
    func required(_ mapping: ConfigMapping, _ key: String) -> Node? {
        guard let node = mapping[key] else {
            fail(mapping.path(key), "missing required key")
            return nil
        }
        return node
    }

    // MARK: Scalars

    /// A scalar's text after environment substitution.
    func text(_ node: Node, at path: String, expected: String = "a string") -> String? {
        guard case .scalar(let scalar) = node else {
            fail(path, "expected \(expected), got \(Self.kind(node))")
            return nil
        }
        switch EnvironmentSubstitution.apply(scalar.string, environment: environment) {
        case .success(let value):
            return value
        case .failure(.unset(let name)):
            fail(path, "environment variable \(name) is not set")
            return nil
        case .failure(.malformed):
            fail(path, "malformed ${...} substitution (expected ${VAR} or ${VAR:-default}; write $$ for a literal $)")
            return nil
        }
    }

    func nonEmptyString(_ node: Node, at path: String) -> String? {
        guard let value = text(node, at: path) else { return nil }
        guard !value.isEmpty else {
            fail(path, "must not be empty")
            return nil
        }
        return value
    }

    /// A name used in metrics labels and error messages: letters, digits, `_`, `-`, `.`.
    func name(_ node: Node, at path: String) -> String? {
        guard let value = nonEmptyString(node, at: path) else { return nil }
        guard value.unicodeScalars.allSatisfy({ $0.isASCIILetterOrDigit || "_-.".unicodeScalars.contains($0) }) else {
            fail(path, "names may only use letters, digits, '_', '-' and '.', got '\(value)'")
            return nil
        }
        return value
    }

    func int(_ node: Node, at path: String, range: ClosedRange<Int>) -> Int? {
        guard let value = text(node, at: path, expected: "an integer") else { return nil }
        let digits = value.hasPrefix("-") ? value.dropFirst() : value[...]
        guard !digits.isEmpty, digits.count <= 18, digits.allSatisfy(\.isASCIIDigit), let number = Int(value) else {
            fail(path, "expected an integer, got '\(value)'")
            return nil
        }
        guard range.contains(number) else {
            fail(path, "must be between \(range.lowerBound) and \(range.upperBound), got \(number)")
            return nil
        }
        return number
    }

    func bool(_ node: Node, at path: String) -> Bool? {
        guard let value = text(node, at: path, expected: "true or false") else { return nil }
        switch value {
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        default:
            fail(path, "expected true or false, got '\(value)'")
            return nil
        }
    }

    func duration(_ node: Node, at path: String, minimum: Duration = .milliseconds(1),
                  maximum: Duration? = nil, wholeSeconds: Bool = false) -> Duration? {
        guard let value = text(node, at: path, expected: "a duration like 30s") else { return nil }
        guard let duration = ConfigSyntax.duration(value) else {
            fail(path, "expected a duration like 20ms, 30s, 15m, 2h or 7d, got '\(value)'")
            return nil
        }
        if duration < minimum {
            fail(path, "must be at least \(ConfigSyntax.format(minimum)), got '\(value)'")
            return nil
        }
        if let maximum, duration > maximum {
            fail(path, "must be at most \(ConfigSyntax.format(maximum)), got '\(value)'")
            return nil
        }
        if wholeSeconds, duration.components.attoseconds != 0 {
            fail(path, "must be a whole number of seconds, got '\(value)'")
            return nil
        }
        return duration
    }

    func size(_ node: Node, at path: String, minimum: Int = 0) -> Int? {
        guard let value = text(node, at: path, expected: "a size like 10MiB") else { return nil }
        guard let size = ConfigSyntax.size(value) else {
            fail(path, "expected a size like 10MiB, got '\(value)'")
            return nil
        }
        guard size >= minimum else {
            fail(path, "must be at least \(minimum) bytes, got '\(value)'")
            return nil
        }
        return size
    }

    func choice<Choice: RawRepresentable & CaseIterable>(_ node: Node, at path: String) -> Choice?
    where Choice.RawValue == String {
        let allowed = Choice.allCases.map(\.rawValue)
        guard let value = text(node, at: path, expected: "one of \(allowed.joined(separator: ", "))") else { return nil }
        if let choice = Choice(rawValue: value) { return choice }
        var reason = "expected one of \(allowed.joined(separator: ", ")), got '\(value)'"
        if let suggestion = closestMatch(to: value, in: allowed)
            ?? allowed.first(where: { $0.lowercased() == value.lowercased() }) {
            reason += " (did you mean '\(suggestion)'?)"
        }
        fail(path, reason)
        return nil
    }

    func address(_ node: Node, at path: String, allowedPorts: ClosedRange<Int> = 0...65535) -> HostPort? {
        guard let value = text(node, at: path, expected: "an address like 0.0.0.0:8443") else { return nil }
        guard let address = HostPort.parse(value, allowedPorts: allowedPorts) else {
            fail(path, "expected an address like 0.0.0.0:8443, [::1]:9901 or host:port "
                + "(port \(allowedPorts.lowerBound)...\(allowedPorts.upperBound)), got '\(value)'")
            return nil
        }
        return address
    }

    /// A list of scalars, each read with `element`. Index paths are `path[i]`.
    func list<Element>(_ node: Node, at path: String, nonEmpty: Bool = false,
                       _ element: (Node, String) -> Element?) -> [Element]? {
        guard let items = sequence(node, at: path) else { return nil }
        if nonEmpty, items.isEmpty {
            fail(path, "must not be empty")
            return nil
        }
        var result: [Element] = []
        var failed = false
        for (index, item) in items.enumerated() {
            if let value = element(item, "\(path)[\(index)]") { result.append(value) } else { failed = true }
        }
        return failed ? nil : result
    }

    /// A file the gateway will read at start-up: resolved against the config's directory and checked
    /// to exist now, so a typo fails validation instead of the first TLS handshake.
    func file(_ node: Node, at path: String) -> String? {
        guard let value = nonEmptyString(node, at: path) else { return nil }
        let resolved = value.hasPrefix("/")
            ? value : URL(fileURLWithPath: baseDirectory).appendingPathComponent(value).standardizedFileURL.path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: resolved, isDirectory: &isDirectory) else {
            fail(path, "file not found: \(value)")
            return nil
        }
        guard !isDirectory.boolValue else {
            fail(path, "is a directory, not a file: \(value)")
            return nil
        }
        guard FileManager.default.isReadableFile(atPath: resolved) else {
            fail(path, "file is not readable: \(value)")
            return nil
        }
        return resolved
    }

    /// Reports entries of `values` that repeat an earlier one; `describe` names the thing.
    func reportDuplicates<Key: Hashable>(_ values: [(key: Key, path: String)], _ describe: (Key) -> String) {
        var firstSeen: [Key: String] = [:]
        for (key, path) in values {
            if let first = firstSeen[key] {
                fail(path, "duplicate \(describe(key)) (first at \(first))")
            } else {
                firstSeen[key] = path
            }
        }
    }
}

/// A mapping's entries (unknown keys already reported) with path helpers.
struct ConfigMapping {
    let path: String
    let entries: [(key: String, value: Node)]

    /// The value for `key`; `nil` when absent or written as null.
    subscript(key: String) -> Node? {
        guard let node = entries.first(where: { $0.key == key })?.value, !ConfigReader.isNull(node) else { return nil }
        return node
    }

    func path(_ key: String) -> String { Self.join(path, key) }

    static func join(_ path: String, _ key: String) -> String {
        path.isEmpty ? key : "\(path).\(key)"
    }
}
