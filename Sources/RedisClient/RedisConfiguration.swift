import NIOCore

/// Where and how to connect. Immutable and `Sendable` (STYLE habit 8); `description` never shows
/// the password.
public struct RedisConfiguration: Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// ACL user for `AUTH user password`; nil with a password sends `AUTH password`.
    public var username: String?
    public var password: String?
    /// Sent as `SELECT db` on every (re)connect when not 0.
    public var database: Int

    /// Connections in the pool; each lives on one event loop of the group (round-robin).
    public var poolSize: Int = 2
    /// TCP connect plus AUTH/SELECT.
    public var connectTimeout: TimeAmount = .milliseconds(250)
    /// A command not answered within this fails with `RedisError.timeout` and recycles the
    /// connection. Callers may pass a tighter timeout per command.
    public var commandTimeout: TimeAmount = .milliseconds(500)
    /// Reconnect delays: the first reconnect after a working connection is immediate, then
    /// `initial`, 2×, 4×, … capped at `max`.
    public var reconnectBackoffInitial: TimeAmount = .milliseconds(20)
    public var reconnectBackoffMax: TimeAmount = .milliseconds(1000)
    /// TLS to the server (`rediss://` turns it on with the defaults); nil is plain TCP.
    public var tls: RedisTLSSettings?
    /// Told about connections failing and recovering, cluster redirections and master switches
    /// (logs and metrics). Called on an event loop: keep it short.
    public var onEvent: (@Sendable (RedisEvent) -> Void)?

    public init(host: String, port: Int = 6379, username: String? = nil, password: String? = nil, database: Int = 0) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
    }

    /// Parses `redis[s]://[user:password@]host:port[/db]` (also `redis://:password@host`,
    /// `redis://password@host` is not accepted: a lone userinfo is a user without password in
    /// URL terms, which Redis cannot use). User and password may be percent-encoded. The thrown
    /// error never quotes the URL (it may hold a password).
    public init(url: String) throws {
        let secure = url.lowercased().hasPrefix("rediss://")
        let prefix = secure ? "rediss://" : "redis://"
        guard url.lowercased().hasPrefix(prefix) else { throw RedisError.invalidURL.with("scheme must be redis:// or rediss://") }
        var rest = Substring(url.dropFirst(prefix.count))
        var user: String?, password: String?
        if let at = rest.lastIndex(of: "@") {
            let info = rest[..<at]
            rest = rest[rest.index(after: at)...]
            guard let colon = info.firstIndex(of: ":") else {
                throw RedisError.invalidURL.with("userinfo must be user:password or :password")
            }
            let u = try Self.percentDecoded(info[..<colon])
            user = u.isEmpty ? nil : u
            password = try Self.percentDecoded(info[info.index(after: colon)...])
        }
        var db = 0
        if let slash = rest.firstIndex(of: "/") {
            let path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !path.isEmpty {
                guard let n = Int(path), n >= 0 else { throw RedisError.invalidURL.with("database must be a non-negative integer") }
                db = n
            }
        }
        var host = String(rest), port = 6379
        if rest.hasPrefix("[") { // [::1]:6379
            guard let close = rest.firstIndex(of: "]") else { throw RedisError.invalidURL.with("unclosed [") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.first == ":", let p = Int(after.dropFirst()) else { throw RedisError.invalidURL.with("bad port") }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]) else { throw RedisError.invalidURL.with("bad port") }
            port = p
        }
        guard !host.isEmpty else { throw RedisError.invalidURL.with("missing host") }
        guard (1...65535).contains(port) else { throw RedisError.invalidURL.with("port out of range") }
        self.init(host: host, port: port, username: user, password: password, database: db)
        if secure { tls = RedisTLSSettings() }
    }

    /// The same settings for another server (a cluster node, the master a sentinel names).
    public func with(host: String, port: Int) -> RedisConfiguration {
        var copy = self
        copy.host = host
        copy.port = port
        return copy
    }

    /// `host:port`, as cluster maps and health reports name a node.
    public var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    private static func percentDecoded(_ s: Substring) throws -> String {
        var out: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let c = it.popFirst() {
            if c == UInt8(ascii: "%") {
                guard it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) else {
                    throw RedisError.invalidURL.with("bad percent-encoding in userinfo")
                }
                out.append(v)
                it = it.dropFirst(2)
            } else {
                out.append(c)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    public var description: String {
        let auth = password == nil ? "" : "\(username ?? ""):***@"
        return "\(tls == nil ? "redis" : "rediss")://\(auth)\(host):\(port)/\(database)"
    }

    /// AUTH and SELECT, in that order, as sent before any command on a new connection.
    var handshake: [[String]] {
        var cmds: [[String]] = []
        if let password {
            if let username { cmds.append(["AUTH", username, password]) } else { cmds.append(["AUTH", password]) }
        }
        if database != 0 { cmds.append(["SELECT", String(database)]) }
        // Without AUTH or SELECT nothing would wait for the TLS handshake before the connection
        // is offered; a PING makes readiness mean "handshake done and the server answers".
        if cmds.isEmpty, tls != nil { cmds.append(["PING"]) }
        return cmds
    }
}

/// TLS towards Redis (`redis.tls`): trust, client certificate and the name verified.
public struct RedisTLSSettings: Sendable, Equatable {
    /// PEM bundle trusted instead of the system store (a private CA).
    public var caFile: String?
    /// Client certificate chain and key (PEM) for servers that require one.
    public var certificateFile: String?
    public var keyFile: String?
    /// Name sent as SNI and matched against the certificate; defaults to the host connected to.
    public var serverName: String?
    /// Off only for throwaway test set-ups: the connection is then open to interception.
    public var verify: Bool

    public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil,
                serverName: String? = nil, verify: Bool = true) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.serverName = serverName
        self.verify = verify
    }
}

/// What a Redis client reports through `RedisConfiguration.onEvent`.
public enum RedisEvent: Sendable {
    /// A connection to `node` could not be made or was refused (TLS, AUTH); only the first
    /// failure of a streak is reported, so a node that stays down does not flood the log.
    case connectFailed(node: String, reason: String)
    /// `node` is reachable again after failures.
    case recovered(node: String)
    /// A cluster node answered `MOVED` (the slot map is refreshed) or `ASK` (one redirection).
    case moved(slot: Int, to: String)
    case ask(slot: Int, to: String)
    /// The cluster slot map was read again from `from`.
    case clusterMapRefreshed(from: String, masters: Int)
    /// Sentinel named a different master.
    case masterSwitched(name: String, to: String)
}
