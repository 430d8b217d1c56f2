/// What went wrong talking to Redis. A struct over a private enum (STYLE habit 6) so cases can be
/// added without breaking callers; compare with the static constants (`error == .timeout`), which
/// ignore `detail`. Error *replies* (`-ERR ...`) are not `RedisError`s: they arrive as
/// `RESPValue.error`, because they answer the command and leave the connection healthy.
public struct RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    private enum Base: String, Sendable, Hashable {
        case notConnected = "not connected"
        case timeout = "command timed out"
        case deadlineExceeded = "no reply by the caller's deadline"
        case connectionClosed = "connection closed"
        case protocolError = "protocol error"
        case handshakeFailed = "AUTH/SELECT failed"
        case invalidURL = "invalid redis URL"
        case poolClosed = "pool closed"
        case tlsSetupFailed = "TLS set-up failed"
        case noRoute = "no node serves this key"
    }

    private let base: Base
    /// Context for logs. Never contains the URL or a password.
    public let detail: String

    private init(_ base: Base, _ detail: String = "") {
        self.base = base
        self.detail = detail
    }

    /// No connection of the pool is up (connecting, or waiting to reconnect): the command was
    /// failed at once instead of queued.
    public static let notConnected = RedisError(.notConnected)
    /// No reply within the command timeout; the connection was closed and is being replaced
    /// (a late reply would be matched to the wrong command).
    public static let timeout = RedisError(.timeout)
    /// No reply by the deadline the caller gave (`sendCommand(_:key:timeout:replyBy:)`). The
    /// command stays in flight and the connection stays up: its reply, when it comes, is dropped.
    public static let deadlineExceeded = RedisError(.deadlineExceeded)
    /// The connection went away with this command in flight.
    public static let connectionClosed = RedisError(.connectionClosed)
    /// The server sent something that is not RESP2; the connection was closed.
    public static let protocolError = RedisError(.protocolError)
    /// AUTH or SELECT was refused on (re)connect.
    public static let handshakeFailed = RedisError(.handshakeFailed)
    public static let invalidURL = RedisError(.invalidURL)
    /// `shutdown()` was called.
    public static let poolClosed = RedisError(.poolClosed)
    /// The CA, certificate or key of `redis.tls` could not be loaded.
    public static let tlsSetupFailed = RedisError(.tlsSetupFailed)
    /// Cluster: the slot map is not known yet, or names no reachable node for the key's slot
    /// (the map is being refreshed in the background).
    public static let noRoute = RedisError(.noRoute)

    /// The same error with context attached.
    public func with(_ detail: String) -> RedisError { RedisError(base, detail) }

    public static func == (a: RedisError, b: RedisError) -> Bool { a.base == b.base }
    public func hash(into h: inout Hasher) { h.combine(base) }

    public var description: String {
        detail.isEmpty ? "redis: \(base.rawValue)" : "redis: \(base.rawValue): \(detail)"
    }
}
