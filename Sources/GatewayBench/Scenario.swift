import Foundation
internal import Yams

/// A `--scenario FILE.yaml`: what to send (weighted targets), how fast (a rate or a ramp of
/// stages) and what must hold (thresholds), in one file a CI job can keep next to its code.
///
/// ```yaml
/// url: https://127.0.0.1:8443
/// connections: 8
/// warmup: 2s
/// ramp: [{rate: 200, for: 5s}, {rate: 400, for: 10s}]
/// thresholds: ["p99<50ms", "errors<0.1%", "rate>=0.99"]
/// jwt_secret_env: BENCH_JWT_SECRET
/// targets:
///   - { name: list, weight: 80, path: /api/bookings, token: { sub: per_connection } }
///   - { name: create, weight: 20, method: POST, path: /api/bookings, body: '{"barber":"Martin"}', expect: [201] }
/// ```
///
/// Settings given on the command line win over the file's; thresholds add up. Every problem is
/// reported as `path.to.key: reason`, all of them at once.
public struct BenchScenario: Sendable, Equatable {
    /// A target with what it adds beyond a request: its own thresholds, and whether it says
    /// which statuses it expects (otherwise the run's `expect_status` applies).
    public struct Target: Sendable, Equatable {
        public var request: BenchRequest
        public var expect: BenchStatusSet?
        public var thresholds: [BenchThreshold]
    }

    public var url: String?
    public var http2: Bool?
    public var insecure: Bool?
    public var connections: Int?
    public var streams: Int?
    public var threads: Int?
    public var timeoutNanos: UInt64?
    public var rate: Double?
    public var durationNanos: UInt64?
    public var warmupNanos: UInt64?
    public var ramp: [BenchStage] = []
    public var expectStatus: BenchStatusSet?
    public var thresholds: [BenchThreshold] = []
    /// Name of the environment variable holding the HS256 secret (never the secret itself).
    public var jwtSecretEnv: String?
    /// Sent with every target, before the target's own.
    public var headers: [BenchHeader] = []
    /// Empty: one GET of the URL's path.
    public var targets: [Target] = []

    static let topKeys = [
        "url", "http2", "insecure", "connections", "streams", "threads", "timeout", "rate", "duration", "warmup", "ramp",
        "expect_status", "thresholds", "jwt_secret_env", "headers", "targets",
    ]
    static let targetKeys = ["name", "weight", "method", "path", "headers", "body", "body_file", "token", "expect", "thresholds"]
    static let tokenKeys = ["sub", "role", "kid", "ttl", "expired"]

    /// Reads and parses a scenario file; `body_file` paths are relative to the file's directory.
    public static func load(path: String) throws(BenchScenarioError) -> BenchScenario {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw BenchScenarioError(file: path, problems: ["cannot read the file"])
        }
        let directory = (path as NSString).deletingLastPathComponent
        return try self.parse(text, file: path, baseDirectory: directory.isEmpty ? "." : directory)
    }

    public static func parse(_ text: String, file: String = "scenario", baseDirectory: String = ".") throws(BenchScenarioError) -> BenchScenario {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw BenchScenarioError(file: file, problems: ["YAML syntax: \(Self.describe(error))"])
        }
        guard let root else { throw BenchScenarioError(file: file, problems: ["the file is empty"]) }
        var reader = ScenarioReader(baseDirectory: baseDirectory)
        let scenario = reader.scenario(root)
        guard reader.problems.isEmpty else { throw BenchScenarioError(file: file, problems: reader.problems) }
        return scenario
    }

    private static func describe(_ error: any Error) -> String {
        if let yaml = error as? YamlError, case .scanner(_, let problem, let mark, _) = yaml {
            return "\(problem) at line \(mark.line), column \(mark.column)"
        }
        if let yaml = error as? YamlError, case .parser(_, let problem, let mark, _) = yaml {
            return "\(problem) at line \(mark.line), column \(mark.column)"
        }
        return "\(error)".split(separator: "\n").first.map(String.init) ?? "invalid YAML"
    }
}

/// Everything wrong with a scenario file, one `path: reason` per problem.
public struct BenchScenarioError: Error, Sendable, CustomStringConvertible {
    public let file: String
    public let problems: [String]

    /// One line per problem, each prefixed with the file: `booking.yaml: targets[1].weight: must be a positive integer`.
    public var description: String { self.problems.map { "\(self.file): \($0)" }.joined(separator: "\n") }
}

/// Walks the composed YAML tree and records every problem with its path instead of stopping at
/// the first, so one run of the tool lists all of them.
private struct ScenarioReader {
    let baseDirectory: String
    var problems: [String] = []

    init(baseDirectory: String) {
        self.baseDirectory = baseDirectory
    }

    mutating func fail(_ path: String, _ reason: String) {
        self.problems.append("\(path): \(reason)")
    }

    // MARK: Document

    mutating func scenario(_ root: Node) -> BenchScenario {
        var scenario = BenchScenario()
        guard let top = self.mapping(root, "", keys: BenchScenario.topKeys) else { return scenario }
        for (key, node) in top {
            switch key {
            case "url":
                if let url = self.string(node, key) {
                    do { _ = try BenchTarget(parsing: url) } catch { self.fail(key, String(error.description.dropFirst("--url: ".count))) }
                    scenario.url = url
                }
            case "http2": scenario.http2 = self.bool(node, key)
            case "insecure": scenario.insecure = self.bool(node, key)
            case "connections": scenario.connections = self.positiveInt(node, key)
            case "streams": scenario.streams = self.positiveInt(node, key)
            case "threads": scenario.threads = self.positiveInt(node, key)
            case "timeout": scenario.timeoutNanos = self.duration(node, key)
            case "rate": scenario.rate = self.rate(node, key)
            case "duration": scenario.durationNanos = self.duration(node, key)
            case "warmup": scenario.warmupNanos = self.duration(node, key)
            case "ramp": scenario.ramp = self.ramp(node, key)
            case "expect_status": scenario.expectStatus = self.statuses(node, key)
            case "thresholds": scenario.thresholds = self.thresholds(node, key)
            case "jwt_secret_env":
                if let name = self.string(node, key) {
                    if name.isEmpty || !name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) {
                        self.fail(key, "expected the name of an environment variable (the secret itself never goes in the file)")
                    } else {
                        scenario.jwtSecretEnv = name
                    }
                }
            case "headers": scenario.headers = self.headers(node, key)
            case "targets": scenario.targets = self.targets(node, key)
            default: break
            }
        }
        if !scenario.ramp.isEmpty {
            if top.contains(where: { $0.0 == "rate" }) { self.fail("rate", "give either rate (with duration) or ramp, not both") }
            if top.contains(where: { $0.0 == "duration" }) { self.fail("duration", "a ramp's stages set the duration; leave duration out") }
        }
        return scenario
    }

    mutating func ramp(_ node: Node, _ path: String) -> [BenchStage] {
        guard let items = self.sequence(node, path) else { return [] }
        if items.isEmpty { self.fail(path, "expected at least one stage {rate: R, for: D}") }
        var stages: [BenchStage] = []
        for (index, item) in items.enumerated() {
            let itemPath = "\(path)[\(index)]"
            guard let fields = self.mapping(item, itemPath, keys: ["rate", "for"]) else { continue }
            let rate = self.required(fields, itemPath, "rate").flatMap { self.rate($0, "\(itemPath).rate") }
            let length = self.required(fields, itemPath, "for").flatMap { self.duration($0, "\(itemPath).for") }
            if let rate, let length { stages.append(BenchStage(rate: rate, durationNanos: length)) }
        }
        return stages
    }

    mutating func targets(_ node: Node, _ path: String) -> [BenchScenario.Target] {
        guard let items = self.sequence(node, path) else { return [] }
        if items.isEmpty { self.fail(path, "expected at least one target (or leave targets out to GET the url)") }
        var targets: [BenchScenario.Target] = []
        var names: Set<String> = []
        for (index, item) in items.enumerated() {
            let itemPath = "\(path)[\(index)]"
            guard let fields = self.mapping(item, itemPath, keys: BenchScenario.targetKeys) else { continue }
            var request = BenchRequest(name: "", path: "/")
            var target = BenchScenario.Target(request: request, expect: nil, thresholds: [])
            var hasPath = false
            var body: [UInt8]? = nil
            for (key, value) in fields {
                let keyPath = "\(itemPath).\(key)"
                switch key {
                case "name": request.name = self.string(value, keyPath) ?? ""
                case "weight": request.weight = self.positiveInt(value, keyPath) ?? 1
                case "method":
                    if let method = self.string(value, keyPath) {
                        if method.isEmpty || !method.utf8.allSatisfy(isTokenByte) {
                            self.fail(keyPath, "\"\(method)\" is not an HTTP method")
                        } else {
                            request.method = method.uppercased()
                        }
                    }
                case "path":
                    if let text = self.string(value, keyPath) {
                        if text.hasPrefix("/") && isSendablePath(text) {
                            request.path = text
                            hasPath = true
                        } else {
                            self.fail(keyPath, "expected an origin-form path starting with / (the host comes from url)")
                        }
                    }
                case "headers": request.headers = self.headers(value, keyPath)
                case "body":
                    if let text = self.string(value, keyPath) {
                        if body != nil { self.fail(keyPath, "give either body or body_file, not both") }
                        body = Array(text.utf8)
                    }
                case "body_file":
                    if let file = self.string(value, keyPath) {
                        if body != nil { self.fail(keyPath, "give either body or body_file, not both") }
                        let full = file.hasPrefix("/") ? file : "\(self.baseDirectory)/\(file)"
                        if let data = FileManager.default.contents(atPath: full) {
                            body = Array(data)
                        } else {
                            self.fail(keyPath, "cannot read \(full)")
                        }
                    }
                case "token": request.token = self.token(value, keyPath)
                case "expect": target.expect = self.statuses(value, keyPath)
                case "thresholds": target.thresholds = self.thresholds(value, keyPath)
                default: break
                }
            }
            if !hasPath && !self.problems.contains(where: { $0.hasPrefix("\(itemPath).path:") }) {
                self.fail("\(itemPath).path", "missing required key")
            }
            request.body = body ?? []
            if request.name.isEmpty { request.name = "\(request.method) \(request.path)" }
            if !names.insert(request.name).inserted {
                self.fail("\(itemPath).name", "\"\(request.name)\" names another target too; give each a distinct name")
            }
            target.request = request
            targets.append(target)
        }
        return targets
    }

    mutating func token(_ node: Node, _ path: String) -> BenchTokenShape {
        if case .scalar(let scalar) = node {
            switch scalar.string {
            case "none": return .none
            case "default": return .runDefault
            case "shared": return .minted(BenchTokenClaims(subject: .shared))
            case "per_connection": return .minted(BenchTokenClaims(subject: .perConnection))
            default:
                self.fail(path, "expected none, default, shared, per_connection or a mapping {sub, role, kid, ttl, expired}")
                return .runDefault
            }
        }
        guard let fields = self.mapping(node, path, keys: BenchScenario.tokenKeys) else { return .runDefault }
        var claims = BenchTokenClaims()
        for (key, value) in fields {
            let keyPath = "\(path).\(key)"
            switch key {
            case "sub":
                switch self.string(value, keyPath) {
                case "per_connection": claims.subject = .perConnection
                case "shared": claims.subject = .shared
                case let subject?:
                    if subject.isEmpty { self.fail(keyPath, "must not be empty") } else { claims.subject = .fixed(subject) }
                case nil: break
                }
            case "role": claims.role = self.string(value, keyPath)
            case "kid": claims.kid = self.string(value, keyPath)
            case "ttl":
                if let nanos = self.duration(value, keyPath) {
                    if nanos < 1_000_000_000 { self.fail(keyPath, "at least 1s") } else { claims.lifetimeSeconds = Int(nanos / 1_000_000_000) }
                }
            case "expired": claims.expired = self.bool(value, keyPath) ?? false
            default: break
            }
        }
        return .minted(claims)
    }

    mutating func headers(_ node: Node, _ path: String) -> [BenchHeader] {
        guard let fields = self.mapping(node, path, keys: nil) else { return [] }
        var headers: [BenchHeader] = []
        for (name, value) in fields {
            let keyPath = "\(path).\(name)"
            guard name.utf8.allSatisfy(isTokenByte), !name.isEmpty else {
                self.fail(keyPath, "\"\(name)\" is not a valid field name")
                continue
            }
            guard let text = self.string(value, keyPath) else { continue }
            if !isSendableFieldValue(text) {
                self.fail(keyPath, "a field value cannot contain CR, LF or NUL")
                continue
            }
            headers.append(BenchHeader(name, text))
        }
        return headers
    }

    mutating func statuses(_ node: Node, _ path: String) -> BenchStatusSet? {
        var set = BenchStatusSet()
        let items: [(Node, String)]
        if case .sequence(let sequence) = node {
            items = sequence.enumerated().map { ($1, "\(path)[\($0)]") }
        } else {
            items = [(node, path)]
        }
        var ok = true
        for (item, itemPath) in items {
            guard let text = self.string(item, itemPath) else {
                ok = false
                continue
            }
            for part in text.split(separator: ",") {
                do { try set.add(String(part).trimmingSpaces) } catch {
                    self.fail(itemPath, error.description)
                    ok = false
                }
            }
        }
        if ok && set.codes.isEmpty && set.classes.isEmpty {
            self.fail(path, "expected at least one status")
            return nil
        }
        return ok ? set : nil
    }

    mutating func thresholds(_ node: Node, _ path: String) -> [BenchThreshold] {
        guard let items = self.sequence(node, path) else { return [] }
        var thresholds: [BenchThreshold] = []
        for (index, item) in items.enumerated() {
            let itemPath = "\(path)[\(index)]"
            guard let text = self.string(item, itemPath) else { continue }
            do { thresholds.append(try BenchThreshold(parsing: text)) } catch { self.fail(itemPath, error.description) }
        }
        return thresholds
    }

    // MARK: Scalars

    mutating func string(_ node: Node, _ path: String) -> String? {
        guard case .scalar(let scalar) = node else {
            self.fail(path, "expected a value, got \(Self.kind(node))")
            return nil
        }
        return scalar.string
    }

    mutating func bool(_ node: Node, _ path: String) -> Bool? {
        switch self.string(node, path) {
        case "true", "True", "yes", "on": return true
        case "false", "False", "no", "off": return false
        case let other?:
            self.fail(path, "expected true or false, got \"\(other)\"")
            return nil
        case nil: return nil
        }
    }

    mutating func positiveInt(_ node: Node, _ path: String) -> Int? {
        guard let text = self.string(node, path) else { return nil }
        guard let value = Int(text), value >= 1 else {
            self.fail(path, "must be a positive integer, got \"\(text)\"")
            return nil
        }
        return value
    }

    mutating func duration(_ node: Node, _ path: String) -> UInt64? {
        guard let text = self.string(node, path) else { return nil }
        guard let value = parseBenchDuration(text) else {
            self.fail(path, "expected a duration like 500ms, 30s or 2m, got \"\(text)\"")
            return nil
        }
        return value
    }

    mutating func rate(_ node: Node, _ path: String) -> Double? {
        guard let text = self.string(node, path) else { return nil }
        guard let value = parseBenchRate(text) else {
            self.fail(path, "expected requests per second, e.g. 2000, got \"\(text)\"")
            return nil
        }
        return value
    }

    // MARK: Structure

    mutating func mapping(_ node: Node, _ path: String, keys: [String]?) -> [(String, Node)]? {
        guard case .mapping(let mapping) = node else {
            self.fail(path.isEmpty ? "(top level)" : path, "expected a mapping, got \(Self.kind(node))")
            return nil
        }
        var entries: [(String, Node)] = []
        var seen: Set<String> = []
        for (keyNode, value) in mapping {
            guard case .scalar(let scalar) = keyNode else {
                self.fail(path.isEmpty ? "(top level)" : path, "keys must be plain strings")
                continue
            }
            let key = scalar.string
            let keyPath = path.isEmpty ? key : "\(path).\(key)"
            if let keys, !keys.contains(key) {
                if let suggestion = closestKey(to: key, in: keys) {
                    self.fail(keyPath, "unknown key (did you mean '\(suggestion)'?)")
                } else {
                    self.fail(keyPath, "unknown key (expected one of: \(keys.joined(separator: ", ")))")
                }
                continue
            }
            if !seen.insert(key).inserted {
                self.fail(keyPath, "given twice")
                continue
            }
            entries.append((key, value))
        }
        return entries
    }

    mutating func sequence(_ node: Node, _ path: String) -> [Node]? {
        guard case .sequence(let sequence) = node else {
            self.fail(path, "expected a list, got \(Self.kind(node))")
            return nil
        }
        return Array(sequence)
    }

    mutating func required(_ fields: [(String, Node)], _ path: String, _ key: String) -> Node? {
        guard let node = fields.first(where: { $0.0 == key })?.1 else {
            self.fail("\(path).\(key)", "missing required key")
            return nil
        }
        return node
    }

    static func kind(_ node: Node) -> String {
        switch node {
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .scalar, .alias: "a value"
        }
    }
}

/// The known key within two edits of a misspelt one (Levenshtein distance).
func closestKey(to key: String, in keys: [String]) -> String? {
    func distance(_ a: [Character], _ b: [Character]) -> Int {
        var previous = Array(0...b.count)
        for (i, ca) in a.enumerated() {
            var current = [i + 1]
            for (j, cb) in b.enumerated() {
                current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (ca == cb ? 0 : 1)))
            }
            previous = current
        }
        return previous[b.count]
    }
    let scored = keys.map { ($0, distance(Array(key), Array($0))) }.filter { $0.1 <= 2 }
    return scored.min { $0.1 < $1.1 }?.0
}
