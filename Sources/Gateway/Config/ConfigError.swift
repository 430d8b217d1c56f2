/// One problem found in `gateway.yaml`, addressed by its key path.
///
/// The path uses the YAML key names (`routes[2].upstream`, `upstreams.booking.endpoints[0]`) so an
/// SRE can find the line without knowing our Swift types. `reason` never contains a secret's value:
/// validators for secret-bearing keys say *what* is wrong without echoing the input.
public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public var path: String
    public var reason: String

    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    public var description: String { "\(path): \(reason)" }
}

/// Every problem found in one load, in document order.
///
/// The loader walks the whole file and collects errors instead of stopping at the first one, so one
/// `gateway validate` run shows everything that needs fixing (Pingora's `from_yaml` + `validate` split).
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [ConfigError]

    public init(errors: [ConfigError]) {
        self.errors = errors
    }

    /// One `path: reason` per line.
    public var description: String {
        errors.map(\.description).joined(separator: "\n")
    }
}
