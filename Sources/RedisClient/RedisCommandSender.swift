import NIOCore

/// Something that runs Redis commands for a key: one server (`RedisConnectionPool`), a cluster
/// routing by the key's slot (`RedisClusterClient`) or the master a Sentinel set names
/// (`RedisSentinelClient`). Every implementation fails at once instead of queueing when it has
/// no connection to the server that owns the key, so callers with a deadline never wait.
public protocol RedisCommandSender: Sendable {
    /// Sends `commands` back to back on one connection of the server that owns `key` (any server
    /// when nil). Fails as a whole with a `RedisError` for connection problems; error replies
    /// are values.
    func send(commands: [[String]], key: String?, timeout: TimeAmount?) -> EventLoopFuture<[RESPValue]>
    /// Sends one command: `send(commands:)` of one, which an implementation may do without the
    /// lists and the extra futures (the rate limiter sends one EVALSHA per request).
    func sendCommand(_ arguments: [String], key: String?, timeout: TimeAmount?) -> EventLoopFuture<RESPValue>
    /// `sendCommand` for a caller with a deadline of its own: past `replyBy` the future fails with
    /// `RedisError.deadlineExceeded` and the connection stays up (a late reply is dropped).
    func sendCommand(_ arguments: [String], key: String?, timeout: TimeAmount?, replyBy: NIODeadline) -> EventLoopFuture<RESPValue>
    /// The deadline-bound `sendCommand` with a callback: `onReply` is called exactly once, on an
    /// event loop of this client or at once on the caller's thread. No future is made where the
    /// implementation can avoid it (`RedisConnectionPool`).
    func sendCommand(
        _ arguments: [String], key: String?, timeout: TimeAmount?, replyBy: NIODeadline,
        onReply: @escaping @Sendable (Result<RESPValue, any Error>) -> Void
    )
    /// The event loop of the next connection (for futures made without I/O).
    func nextEventLoop() -> any EventLoop
    /// One row per server this client talks to, for health reports.
    var nodeStates: [RedisNodeState] { get }
    /// Closes every connection and stops reconnecting or rediscovering.
    func shutdown() -> EventLoopFuture<Void>
}

/// One server as a health report shows it.
public struct RedisNodeState: Sendable, Equatable {
    /// `host:port`.
    public var address: String
    /// `standalone`, `master` (a cluster master or the Sentinel-named master) or `sentinel`.
    public var role: String
    /// Connections up at the moment of the call.
    public var connections: Int
    /// Hash slots this node serves (cluster only).
    public var slots: Int?

    public init(address: String, role: String, connections: Int, slots: Int? = nil) {
        self.address = address
        self.role = role
        self.connections = connections
        self.slots = slots
    }
}

extension RedisCommandSender {
    public func send(_ arguments: [String], key: String? = nil, timeout: TimeAmount? = nil) -> EventLoopFuture<RESPValue> {
        sendCommand(arguments, key: key, timeout: timeout)
    }

    public func sendCommand(_ arguments: [String], key: String?, timeout: TimeAmount?) -> EventLoopFuture<RESPValue> {
        send(commands: [arguments], key: key, timeout: timeout).map { $0[0] }
    }

    /// A timer of its own per command; `RedisConnectionPool` leaves the deadline to the connection's
    /// one timer instead.
    public func sendCommand(_ arguments: [String], key: String?, timeout: TimeAmount?, replyBy: NIODeadline) -> EventLoopFuture<RESPValue> {
        let reply = sendCommand(arguments, key: key, timeout: timeout)
        let loop = reply.eventLoop
        let promise = loop.makePromise(of: RESPValue.self)
        let timer = loop.scheduleTask(deadline: replyBy) { promise.fail(RedisError.deadlineExceeded) }
        reply.whenComplete { result in
            timer.cancel()
            promise.completeWith(result)
        }
        return promise.futureResult
    }

    /// Through the future: for a client that routes first (cluster, Sentinel).
    public func sendCommand(
        _ arguments: [String], key: String?, timeout: TimeAmount?, replyBy: NIODeadline,
        onReply: @escaping @Sendable (Result<RESPValue, any Error>) -> Void
    ) {
        sendCommand(arguments, key: key, timeout: timeout, replyBy: replyBy).whenComplete(onReply)
    }

    /// Servers with at least one connection up.
    public var connectedNodes: Int { nodeStates.filter { $0.connections > 0 }.count }
}
