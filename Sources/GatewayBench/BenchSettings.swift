import JWTVerifier

/// Everything one `gateway bench` run needs, validated before any socket opens.
public struct BenchSettings: Sendable {
    public enum Mode: Sendable, Equatable {
        /// Open loop: request `i` is due at `start + i / rate`, whatever the server does.
        case fixedRate(Double)
        /// Closed loop: every slot sends its next request as soon as the previous one completes.
        case maxThroughput
    }

    public enum Authorization: Sendable, Equatable {
        case none
        case token(String)
        /// Mint HS256 tokens with this secret; one `sub` per connection when `perConnectionSubject`.
        case jwtSecret(String, perConnectionSubject: Bool)
    }

    /// Scheme, host and port of every request; its path is the default request's.
    public var target: BenchTarget
    /// What to send, picked by weight for each request; at least one.
    public var requests: [BenchRequest]
    public var mode: Mode
    /// Fixed rate: the stages in order (one when there is no ramp). Max: empty.
    public var stages: [BenchStage]
    /// Sent before the recorded run, at the first stage's rate (or closed loop), and not recorded.
    public var warmupNanos: UInt64
    /// The recorded part: the stages' durations added up at a fixed rate.
    public var durationNanos: UInt64
    public var connections: Int
    /// Concurrent requests per connection: HTTP/2 streams; always 1 for HTTP/1.1.
    public var streams: Int
    public var http2: Bool
    public var threads: Int
    public var insecure: Bool
    public var authorization: Authorization
    /// A request without a response after this long counts as a `timeout` error.
    public var timeoutNanos: UInt64
    public var progress: Bool

    /// `requests` nil: one GET of `target.path` with `headers`. `stages` nil: the whole duration
    /// at the fixed rate.
    public init(
        target: BenchTarget, mode: Mode, durationNanos: UInt64, connections: Int, streams: Int, http2: Bool,
        threads: Int, insecure: Bool, authorization: Authorization, headers: [BenchHeader] = [],
        timeoutNanos: UInt64, progress: Bool = true, requests: [BenchRequest]? = nil, stages: [BenchStage]? = nil,
        warmupNanos: UInt64 = 0
    ) {
        self.target = target
        self.requests = requests ?? [BenchRequest(name: "default", path: target.path, headers: headers)]
        self.mode = mode
        switch mode {
        case .fixedRate(let rate):
            self.stages = stages ?? [BenchStage(rate: rate, durationNanos: durationNanos)]
            self.durationNanos = self.stages.reduce(0) { $0 + $1.durationNanos }
        case .maxThroughput:
            self.stages = []
            self.durationNanos = durationNanos
        }
        self.warmupNanos = warmupNanos
        self.connections = connections
        self.streams = http2 ? streams : 1
        self.http2 = http2
        self.threads = threads
        self.insecure = insecure
        self.authorization = authorization
        self.timeoutNanos = timeoutNanos
        self.progress = progress
    }

    /// The stages with the warm-up in front (as stage 0) when there is one.
    var scheduledStages: [BenchStage] {
        guard self.warmupNanos > 0, let first = self.stages.first else { return self.stages }
        return [BenchStage(rate: first.rate, durationNanos: self.warmupNanos)] + self.stages
    }

    /// Event loops actually used: never more than there are connections to drive.
    var effectiveThreads: Int { max(1, min(self.threads, self.connections)) }
}

/// The parsed `--url`: `http` or `https`, host, port, path with query.
public struct BenchTarget: Sendable, Equatable {
    public var tls: Bool
    public var host: String
    public var port: Int
    /// Origin-form request target (`/api/bookings?delay_ms=5`).
    public var path: String

    /// The `Host` / `:authority` value: the port only when it is not the scheme's default.
    public var authority: String {
        let bracketed = self.host.contains(":") ? "[\(self.host)]" : self.host
        let defaultPort = self.tls ? 443 : 80
        return self.port == defaultPort ? bracketed : "\(bracketed):\(self.port)"
    }

    /// True when `host` is an IPv4 or IPv6 literal: no SNI for those (RFC 6066 §3).
    public var hostIsIPAddress: Bool {
        if self.host.contains(":") { return true }
        let parts = self.host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }

    public init(tls: Bool, host: String, port: Int, path: String) {
        self.tls = tls
        self.host = host
        self.port = port
        self.path = path
    }

    /// Parses `http[s]://host[:port][/path][?query]`; IPv6 literals in brackets.
    public init(parsing url: String) throws(BenchError) {
        let tls: Bool
        let rest: Substring
        if url.hasPrefix("https://") {
            tls = true
            rest = url.dropFirst("https://".count)
        } else if url.hasPrefix("http://") {
            tls = false
            rest = url.dropFirst("http://".count)
        } else {
            throw BenchError.usage("--url: must start with http:// or https://")
        }
        let pathStart = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let authority = rest[..<pathStart]
        var path = String(rest[pathStart...])
        if path.isEmpty { path = "/" } else if path.hasPrefix("?") { path = "/" + path }
        if let hash = path.firstIndex(of: "#") { path = String(path[..<hash]) }
        if !isSendablePath(path) {
            throw BenchError.usage("--url: the path cannot contain spaces or control characters (percent-encode them)")
        }
        var host: Substring
        var portText: Substring? = nil
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw BenchError.usage("--url: unclosed [ in host") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty {
                throw BenchError.usage("--url: unexpected text after ]")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        guard !host.isEmpty else { throw BenchError.usage("--url: no host") }
        var port = tls ? 443 : 80
        if let portText {
            guard let parsed = Int(portText), (1...65535).contains(parsed) else {
                throw BenchError.usage("--url: bad port \"\(portText)\"")
            }
            port = parsed
        }
        self.init(tls: tls, host: String(host), port: port, path: path)
    }
}

public struct BenchError: Error, CustomStringConvertible, Sendable {
    public let description: String

    public static func usage(_ message: String) -> BenchError { BenchError(description: message) }
}

/// `--duration` / `--timeout` values: `500ms`, `30s`, `2m`, `1h`, or bare seconds.
public func parseBenchDuration(_ text: String) -> UInt64? {
    let units: [(String, Double)] = [("ms", 1e6), ("us", 1e3), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
    for (suffix, scale) in units where text.hasSuffix(suffix) {
        guard let value = Double(text.dropLast(suffix.count)), value > 0, value.isFinite else { return nil }
        return UInt64(value * scale)
    }
    guard let seconds = Double(text), seconds > 0, seconds.isFinite else { return nil }
    return UInt64(seconds * 1e9)
}

/// `--rate` values: `2000` or `2000/s`.
public func parseBenchRate(_ text: String) -> Double? {
    let number = text.hasSuffix("/s") ? String(text.dropLast(2)) : text
    guard let rate = Double(number), rate > 0, rate.isFinite else { return nil }
    return rate
}

/// HS256 test tokens for `--jwt-secret` and scenario token shapes, shaped like the ones
/// `barberpro-auth` issues (the claims `gateway token` mints).
enum BenchToken {
    /// `connection` gives each connection its own `sub` (`bench-user-N`), so per-user rate limits
    /// see N users; nil gives every connection the same `bench-user`.
    static func mint(secret: String, connection: Int?, now: Int) throws -> String {
        try self.mint(secret: secret, claims: BenchTokenClaims(subject: connection == nil ? .shared : .perConnection), connection: connection ?? 0, now: now)
    }

    static func mint(secret: String, claims: BenchTokenClaims, connection: Int, now: Int) throws -> String {
        let signer = try JWTSigner(algorithm: .hs256, secret: Array(secret.utf8), kid: claims.kid)
        let subject: String
        switch claims.subject {
        case .shared: subject = "bench-user"
        case .perConnection: subject = "bench-user-\(connection)"
        case .fixed(let fixed): subject = fixed
        }
        // An expired token was issued two lifetimes ago, so it is past `exp` by a whole lifetime
        // (beyond any clock-skew leeway the gateway allows).
        let issued = claims.expired ? now - 2 * claims.lifetimeSeconds : now
        var fields: [(String, JWTSigner.ClaimValue)] = [
            ("sub", .string(subject)),
            ("iss", .string("barberpro-auth")),
            ("aud", .string("barberpro-api")),
        ]
        if let role = claims.role { fields.append(("role", .string(role))) }
        fields.append(("iat", .integer(issued)))
        fields.append(("exp", .integer(issued + claims.lifetimeSeconds)))
        return signer.sign(fields)
    }
}
