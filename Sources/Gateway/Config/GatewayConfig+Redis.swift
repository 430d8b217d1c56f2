import Foundation
import NIOCore
import RedisClient
internal import Yams

/// How the gateway finds its Redis (`redis.mode`).
public enum RedisMode: String, Sendable, Equatable, CaseIterable {
    /// One server, `redis.url`.
    case standalone
    /// Redis Cluster from the seed nodes in `redis.nodes`.
    case cluster
    /// The master Sentinel names `redis.master_name`, asking `redis.sentinels`.
    case sentinel
}

/// `redis:` — the rate-limit store.
public struct RedisConfig: Sendable, Equatable {
    /// From `redis.url`: the server (standalone) or the credentials, database and scheme every
    /// node uses (cluster, sentinel). `nil` when `url` is absent or empty.
    public let endpoint: RedisEndpoint?
    public let timeout: Duration
    public let mode: RedisMode
    /// Cluster seed nodes.
    public let nodes: [HostPort]
    public let sentinels: [HostPort]
    public let masterName: String?
    /// `redis.tls`; also set (with defaults) by a `rediss://` URL.
    public let tls: RedisTLSConfig?
    /// TCP connect, TLS handshake, AUTH and SELECT together.
    public let connectTimeout: Duration

    public init(endpoint: RedisEndpoint?, timeout: Duration, mode: RedisMode = .standalone, nodes: [HostPort] = [],
                sentinels: [HostPort] = [], masterName: String? = nil, tls: RedisTLSConfig? = nil,
                connectTimeout: Duration = .milliseconds(250)) {
        self.endpoint = endpoint
        self.timeout = timeout
        self.mode = mode
        self.nodes = nodes
        self.sentinels = sentinels
        self.masterName = masterName
        self.tls = tls
        self.connectTimeout = connectTimeout
    }

    /// Rate limits are kept in Redis (otherwise in process).
    public var isEnabled: Bool { endpoint != nil || mode != .standalone }
}

/// `redis.tls`.
public struct RedisTLSConfig: Sendable, Equatable {
    /// PEM bundle trusted instead of the system store.
    public let ca: String?
    public let cert: String?
    public let key: String?
    public let serverName: String?
    public let verify: Bool
}

public struct RedisEndpoint: Sendable, Equatable, CustomStringConvertible {
    public let host: String
    public let port: Int
    public let username: String?
    public let password: ConfigSecret?
    public let database: Int
    /// `rediss://`.
    public var tls: Bool = false

    /// The URL with the password replaced, safe for logs and `/config`.
    public var description: String {
        var userinfo = ""
        if username != nil || password != nil {
            userinfo = (username ?? "") + (password != nil ? ":<redacted>" : "") + "@"
        }
        let hostPart = host.contains(":") ? "[\(host)]" : host
        return "\(tls ? "rediss" : "redis")://\(userinfo)\(hostPart):\(port)/\(database)"
    }
}

extension GatewayConfig {
    static func decodeRedis(_ node: Node?, reader r: ConfigReader) -> RedisConfig {
        var endpoint: RedisEndpoint?
        var timeout: Duration = .milliseconds(20)
        var connectTimeout: Duration = .milliseconds(250)
        var mode = RedisMode.standalone
        var nodes: [HostPort] = [], sentinels: [HostPort] = []
        var masterName: String?
        var tls: RedisTLSConfig?
        let keys = ["url", "timeout", "connect_timeout", "mode", "nodes", "sentinels", "master_name", "tls", "password_file"]
        guard let node, let m = r.mapping(node, at: "redis", keys: keys) else {
            return RedisConfig(endpoint: endpoint, timeout: timeout)
        }
        if let value = m["url"], let url = r.text(value, at: m.path("url")), !url.isEmpty {
            endpoint = redisEndpoint(url, at: m.path("url"), userOnly: m["password_file"] != nil, reader: r)
        }
        timeout = m["timeout"].flatMap { r.duration($0, at: m.path("timeout")) } ?? timeout
        connectTimeout = m["connect_timeout"].flatMap { r.duration($0, at: m.path("connect_timeout")) } ?? connectTimeout
        let chosen: RedisMode? = m["mode"].flatMap { r.choice($0, at: m.path("mode")) }
        mode = chosen ?? mode
        let address = { (item: Node, path: String) in r.address(item, at: path, allowedPorts: 1...65535) }
        if let list = m["nodes"] { nodes = r.list(list, at: m.path("nodes"), nonEmpty: true, address) ?? [] }
        if let list = m["sentinels"] { sentinels = r.list(list, at: m.path("sentinels"), nonEmpty: true, address) ?? [] }
        masterName = m["master_name"].flatMap { r.nonEmptyString($0, at: m.path("master_name")) }
        if let file = m["password_file"].flatMap({ r.file($0, at: m.path("password_file")) }) {
            endpoint = passwordFromFile(file, endpoint: endpoint, at: m.path("password_file"), reader: r)
        }
        if let node = m["tls"] {
            tls = decodeRedisTLS(node, at: m.path("tls"), reader: r)
        } else if endpoint?.tls == true {
            tls = RedisTLSConfig(ca: nil, cert: nil, key: nil, serverName: nil, verify: true)
        }
        // A misspelt mode is reported once, not again as every key that mode would not take.
        switch m["mode"] != nil && chosen == nil ? nil : mode {
        case nil:
            break
        case .standalone:
            if let endpoint, endpoint.host.isEmpty { r.fail(m.path("password_file"), "needs redis.url (the server)") }
            if m["nodes"] != nil { r.fail(m.path("nodes"), "only with mode: cluster") }
            if m["sentinels"] != nil { r.fail(m.path("sentinels"), "only with mode: sentinel") }
            if m["master_name"] != nil { r.fail(m.path("master_name"), "only with mode: sentinel") }
        case .cluster:
            if m["nodes"] == nil { r.fail(m.path("nodes"), "required with mode: cluster (seed nodes, host:port)") }
            if let endpoint, endpoint.database != 0 { r.fail(m.path("url"), "Redis Cluster has database 0 only") }
            if m["sentinels"] != nil { r.fail(m.path("sentinels"), "only with mode: sentinel") }
        case .sentinel:
            if m["sentinels"] == nil { r.fail(m.path("sentinels"), "required with mode: sentinel (host:port of each sentinel)") }
            if m["master_name"] == nil { r.fail(m.path("master_name"), "required with mode: sentinel") }
            if m["nodes"] != nil { r.fail(m.path("nodes"), "only with mode: cluster") }
        }
        return RedisConfig(endpoint: endpoint, timeout: timeout, mode: mode, nodes: nodes, sentinels: sentinels,
                           masterName: masterName, tls: tls, connectTimeout: connectTimeout)
    }

    private static func decodeRedisTLS(_ node: Node, at path: String, reader r: ConfigReader) -> RedisTLSConfig? {
        guard let m = r.mapping(node, at: path, keys: ["ca", "cert", "key", "server_name", "verify"]) else { return nil }
        let cert = m["cert"].flatMap { r.file($0, at: m.path("cert")) }
        let key = m["key"].flatMap { r.file($0, at: m.path("key")) }
        if (m["cert"] == nil) != (m["key"] == nil) {
            r.fail(m.path(m["cert"] == nil ? "cert" : "key"), "cert and key go together (a client certificate and its key)")
        }
        return RedisTLSConfig(
            ca: m["ca"].flatMap { r.file($0, at: m.path("ca")) }, cert: cert, key: key,
            serverName: m["server_name"].flatMap { r.nonEmptyString($0, at: m.path("server_name")) },
            verify: m["verify"].flatMap { r.bool($0, at: m.path("verify")) } ?? true
        )
    }

    /// The file's first line is the password (a trailing newline is not part of it); it replaces
    /// the URL's. Never quoted in messages.
    private static func passwordFromFile(
        _ file: String, endpoint: RedisEndpoint?, at path: String, reader r: ConfigReader
    ) -> RedisEndpoint? {
        guard let data = FileManager.default.contents(atPath: file) else {
            r.fail(path, "file is not readable")
            return endpoint
        }
        // "\r\n" is one Character in Swift, so isNewline covers both line ends.
        let secret = String(String(decoding: data, as: UTF8.self)
            .split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).first ?? "")
        guard !secret.isEmpty else {
            r.fail(path, "the file's first line (the password) is empty")
            return endpoint
        }
        let e = endpoint
        return RedisEndpoint(host: e?.host ?? "", port: e?.port ?? 6379, username: e?.username,
                             password: ConfigSecret(secret), database: e?.database ?? 0, tls: e?.tls ?? false)
    }

    /// `redis[s]://[user:password@]host:port[/db]`. The URL may hold a password, so no message quotes it.
    /// `userOnly`: `user@` alone is accepted (the password comes from `password_file`).
    private static func redisEndpoint(_ url: String, at path: String, userOnly: Bool, reader r: ConfigReader) -> RedisEndpoint? {
        let usage = "(expected redis[s]://[user:password@]host:port[/db])"
        let tls = url.hasPrefix("rediss://")
        guard url.hasPrefix("redis://") || tls else {
            r.fail(path, "scheme must be redis:// or rediss:// \(usage)")
            return nil
        }
        var rest = url.dropFirst(tls ? "rediss://".count : "redis://".count)
        var username: String?
        var password: ConfigSecret?
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            guard let colon = userinfo.firstIndex(of: ":") ?? (userOnly ? userinfo.endIndex : nil) else {
                r.fail(path, "credentials must be written user:password (user may be empty) \(usage)")
                return nil
            }
            let user = String(userinfo[..<colon]).removingPercentEncoding ?? ""
            let secret = colon == userinfo.endIndex ? "" : String(userinfo[userinfo.index(after: colon)...]).removingPercentEncoding ?? ""
            guard !secret.isEmpty || userOnly else {
                r.fail(path, "password is empty \(usage)")
                return nil
            }
            username = user.isEmpty ? nil : user
            password = secret.isEmpty ? nil : ConfigSecret(secret)
        }
        var database = 0
        var hostPart = rest
        if let slash = rest.firstIndex(of: "/") {
            hostPart = rest[..<slash]
            let db = rest[rest.index(after: slash)...]
            if !db.isEmpty {
                guard db.count <= 5, db.allSatisfy(\.isASCIIDigit), let number = Int(db) else {
                    r.fail(path, "database must be a non-negative integer \(usage)")
                    return nil
                }
                database = number
            }
        }
        guard let address = HostPort.parse(String(hostPart), allowedPorts: 1...65535) else {
            r.fail(path, "host:port is missing or invalid \(usage)")
            return nil
        }
        return RedisEndpoint(host: address.host, port: address.port, username: username,
                             password: password, database: database, tls: tls)
    }
}

extension RedisConfig {
    /// Everything the store is built from (servers, credentials, TLS, timeouts); a reload that
    /// keeps it keeps the connections. In memory only: it holds the password.
    var connectionIdentity: String {
        let e = endpoint
        return [mode.rawValue, e?.host ?? "", String(e?.port ?? 0), String(e?.database ?? 0), e?.username ?? "",
                e?.password?.value ?? "", nodes.map(\.description).joined(separator: ","),
                sentinels.map(\.description).joined(separator: ","), masterName ?? "", String(describing: tls),
                String(describing: connectTimeout), String(describing: timeout)].joined(separator: "\u{0}")
    }

    /// The client for this configuration; connecting (and, for cluster and Sentinel, discovery)
    /// starts at once in the background.
    func makeClient(group: any EventLoopGroup, onEvent: @escaping @Sendable (RedisEvent) -> Void) -> any RedisCommandSender {
        let e = endpoint
        var c = RedisConfiguration(host: e?.host ?? "", port: e?.port ?? 6379, username: e?.username,
                                   password: e?.password?.value, database: e?.database ?? 0)
        c.connectTimeout = TimeAmount(connectTimeout)
        c.onEvent = onEvent
        if let tls {
            c.tls = RedisTLSSettings(caFile: tls.ca, certificateFile: tls.cert, keyFile: tls.key,
                                     serverName: tls.serverName, verify: tls.verify)
        }
        switch mode {
        case .standalone:
            return RedisConnectionPool(configuration: c, eventLoopGroup: group)
        case .cluster:
            return RedisClusterClient(configuration: c, seeds: nodes.map { ($0.host, $0.port) }, eventLoopGroup: group)
        case .sentinel:
            return RedisSentinelClient(configuration: c, sentinels: sentinels.map { ($0.host, $0.port) },
                                       masterName: masterName ?? "", eventLoopGroup: group)
        }
    }
}

extension RedisEvent {
    /// The `event` label of `gateway_redis_events_total`.
    var metricLabel: String {
        switch self {
        case .connectFailed: "connect_failed"
        case .recovered: "recovered"
        case .moved: "moved"
        case .ask: "ask"
        case .clusterMapRefreshed: "cluster_map_refresh"
        case .masterSwitched: "master_switch"
        }
    }

    /// One log line; nil for events too frequent to log (redirections are counted only).
    var logLine: String? {
        switch self {
        case .connectFailed(let node, let reason): "redis \(node): connection failed: \(reason)"
        case .recovered(let node): "redis \(node): connected again"
        case .moved, .ask: nil
        case .clusterMapRefreshed(let from, let masters): "redis cluster: slot map read from \(from) (\(masters) masters)"
        case .masterSwitched(let name, let to): "redis sentinel: master \(name) is \(to)"
        }
    }
}
