import Foundation
internal import Yams

/// Loads and validates `gateway.yaml`.
///
/// The file is composed into a YAML node tree and walked by hand (not `Decodable`, which stops at the
/// first error) so that one run reports every problem as `path.to.key: reason`. Nothing here binds
/// sockets or opens keys: the result is a plain value the caller may start, or refuse on reload.
public enum ConfigLoader {
    /// Reads and validates the file at `path`. Relative paths inside it (certificates, keys) are
    /// resolved against the file's own directory, so `gateway run --config /etc/gw/gateway.yaml`
    /// behaves the same from any working directory.
    public static func load(
        path: String,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigErrors) -> GatewayConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path)
                ? "cannot read file: \(path)" : "file not found: \(path)"
            throw ConfigErrors(errors: [ConfigError(path: "config", reason: reason)])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigErrors(errors: [ConfigError(path: "config", reason: "file is not valid UTF-8: \(path)")])
        }
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        return try parse(yaml: text, environment: environment, baseDirectory: directory)
    }

    /// Validates YAML text. `environment` supplies `${VAR}` values (injectable for tests);
    /// `baseDirectory` anchors relative file paths.
    public static func parse(
        yaml: String,
        environment: [String: String],
        baseDirectory: String
    ) throws(ConfigErrors) -> GatewayConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw ConfigErrors(errors: [ConfigError(path: "config", reason: describe(yamlError: error))])
        }
        guard let root, !ConfigReader.isNull(root) else {
            throw ConfigErrors(errors: [ConfigError(path: "config", reason: "file is empty")])
        }
        let reader = ConfigReader(environment: environment, baseDirectory: baseDirectory)
        let config = GatewayConfig.decode(root, reader: reader)
        if let config, reader.errors.isEmpty {
            return config
        }
        throw ConfigErrors(errors: reader.errors)
    }

    /// Turns a Yams error into one line with its position. Never uses `YamlError.description`: it
    /// quotes the offending source line (and, for duplicate keys, the whole file), which may hold secrets.
    private static func describe(yamlError error: any Error) -> String {
        guard let error = error as? YamlError else { return "invalid YAML" }
        switch error {
        case .duplicatedKeysInMapping(let duplicates, let context):
            let names = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            return "duplicate key \(names) in a mapping (line \(context.mark.line), column \(context.mark.column))"
        case .scanner(let context, let problem, let mark, _),
             .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            let while_ = context.map { " (\($0.text))" } ?? ""
            return "invalid YAML at line \(mark.line), column \(mark.column): \(problem)\(while_)"
        case .reader(let problem, let offset, _, _):
            return "invalid YAML\(offset.map { " at byte \($0)" } ?? ""): \(problem)"
        default:
            return "invalid YAML"
        }
    }
}

// MARK: - Environment substitution

/// `${VAR}`, `${VAR:-default}` and `$$`, applied to one scalar's text after YAML composition, so a
/// substituted value can never change the document's structure and an error can name its key.
enum EnvironmentSubstitution {
    enum Failure: Error, Equatable {
        case unset(String)
        case malformed
    }

    /// Shell semantics: `${VAR:-default}` uses `default` when VAR is unset *or empty*; `${VAR}` accepts
    /// an empty value but fails when VAR is unset. A `$` not followed by `{` or `$` is literal.
    static func apply(_ text: String, environment: [String: String]) -> Result<String, Failure> {
        guard text.contains("$") else { return .success(text) }
        var output = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            let next = text.index(after: index)
            guard character == "$", next < text.endIndex else {
                output.append(character)
                index = next
                continue
            }
            if text[next] == "$" {
                output.append("$")
                index = text.index(after: next)
                continue
            }
            guard text[next] == "{" else {
                output.append(character)
                index = next
                continue
            }
            let bodyStart = text.index(after: next)
            guard let close = text[bodyStart...].firstIndex(of: "}") else { return .failure(.malformed) }
            let body = text[bodyStart..<close]
            let name: Substring
            let fallback: Substring?
            if let operatorRange = body.range(of: ":-") {
                name = body[..<operatorRange.lowerBound]
                fallback = body[operatorRange.upperBound...]
            } else {
                name = body
                fallback = nil
            }
            guard isVariableName(name) else { return .failure(.malformed) }
            let value = environment[String(name)]
            if let fallback {
                output += (value?.isEmpty ?? true) ? String(fallback) : value!
            } else if let value {
                output += value
            } else {
                return .failure(.unset(String(name)))
            }
            index = text.index(after: close)
        }
        return .success(output)
    }

    private static func isVariableName(_ name: Substring) -> Bool {
        guard let first = name.unicodeScalars.first, !("0"..."9").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy { $0.isASCIILetterOrDigit || $0 == "_" }
    }
}
