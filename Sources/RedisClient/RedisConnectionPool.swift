import NIOCore
import NIOPosix
import Synchronization
import TLSClient

/// A small fixed set of pipelined Redis connections, each on one event loop of a group.
///
/// - Commands go round-robin to connections that are up; any number may be in flight on each.
/// - A command never waits for a connection: while none is up (connecting, or backing off after
///   a failure) it fails at once with `RedisError.notConnected`. Callers that must not stall
///   (the rate limiter) get a fast, distinguishable failure instead of a queue.
/// - Reconnects happen in the background on the connection's event loop (scheduled tasks, never
///   a sleep), so once Redis is back the next command finds a connection already up.
/// - Every new connection sends AUTH and SELECT (from the URL) before any command; until both are
///   answered the connection does not take commands.
///
/// State changes under a lock, I/O after it (STYLE habit 2).
public final class RedisConnectionPool: RedisCommandSender {
    public let configuration: RedisConfiguration
    private let connections: [RedisConnection]
    private let nextIndex = Atomic<Int>(0)
    /// Reported in `nodeStates` (a cluster or Sentinel client names its pools' roles).
    let role: String

    /// Creates `configuration.poolSize` connections on `eventLoopGroup` and starts connecting.
    /// A TLS set-up that cannot work (an unreadable CA or key file) is reported through
    /// `onEvent` and fails every connection attempt with its reason.
    public convenience init(configuration: RedisConfiguration, eventLoopGroup: any EventLoopGroup) {
        self.init(configuration: configuration, eventLoopGroup: eventLoopGroup,
                  tls: RedisTLSContext.make(configuration), role: "standalone")
    }

    /// Pools of one cluster or Sentinel set share one TLS context.
    init(configuration: RedisConfiguration, eventLoopGroup: any EventLoopGroup,
         tls: Result<TLSClientContext, RedisError>?, role: String) {
        precondition(configuration.poolSize >= 1, "pool needs at least one connection")
        self.configuration = configuration
        self.role = role
        connections = (0..<configuration.poolSize).map { _ in
            RedisConnection(configuration: configuration, tls: tls, eventLoop: eventLoopGroup.next())
        }
        for c in connections { c.start() }
    }

    public func send(commands: [[String]], key: String?, timeout: TimeAmount?) -> EventLoopFuture<[RESPValue]> {
        send(commands: commands, timeout: timeout)
    }

    public var nodeStates: [RedisNodeState] {
        [RedisNodeState(address: configuration.address, role: role, connections: connectedCount)]
    }

    /// Sends one command (`["SET", "k", "v"]`). The future fails with a `RedisError` for
    /// connection problems; a Redis error reply succeeds as `RESPValue.error`.
    /// `timeout` overrides `configuration.commandTimeout` for this command.
    public func send(_ arguments: [String], timeout: TimeAmount? = nil) -> EventLoopFuture<RESPValue> {
        sendCommand(arguments, key: nil, timeout: timeout)
    }

    /// One command's promise, straight from the connection that queues it.
    public func sendCommand(_ arguments: [String], key: String?, timeout: TimeAmount?) -> EventLoopFuture<RESPValue> {
        sendCommand(arguments, timeout: timeout, replyBy: nil)
    }

    /// The caller's deadline rides with the command: the connection's one timer covers it.
    public func sendCommand(_ arguments: [String], key: String?, timeout: TimeAmount?, replyBy: NIODeadline) -> EventLoopFuture<RESPValue> {
        sendCommand(arguments, timeout: timeout, replyBy: replyBy)
    }

    private func sendCommand(_ arguments: [String], timeout: TimeAmount?, replyBy: NIODeadline?) -> EventLoopFuture<RESPValue> {
        self.firstTaker(timeout) { connection, t in connection.send(arguments, timeout: t, replyBy: replyBy) }
            ?? self.nextEventLoop().makeFailedFuture(self.unavailable)
    }

    /// `sendCommand(_:key:timeout:replyBy:)` with a callback instead of a future: `onReply` is
    /// called once, on the connection's event loop, or at once (on the caller's thread) when no
    /// connection is up.
    public func sendCommand(
        _ arguments: [String], key: String?, timeout: TimeAmount?, replyBy: NIODeadline,
        onReply: @escaping @Sendable (Result<RESPValue, any Error>) -> Void
    ) {
        let taken = self.firstTaker(timeout) { connection, t in
            connection.send(arguments, timeout: t, replyBy: replyBy, onReply: onReply) ? true : nil
        }
        if taken == nil { onReply(.failure(self.unavailable)) }
    }

    /// Sends `commands` back to back on one connection, so Redis runs them in this order with
    /// nothing in between from this pool (e.g. `SCRIPT LOAD` then the `EVALSHA` that needs it,
    /// in one round trip). Fails as a whole if any of them fails; error replies are values.
    public func send(commands: [[String]], timeout: TimeAmount? = nil) -> EventLoopFuture<[RESPValue]> {
        precondition(!commands.isEmpty)
        let sent = self.firstTaker(timeout) { connection, t in
            connection.send(commands, timeout: t).map { (connection.eventLoop, $0) }
        }
        guard let (loop, futures) = sent else { return self.nextEventLoop().makeFailedFuture(self.unavailable) }
        if futures.count == 1 { return futures[0].map { [$0] } }
        return EventLoopFuture.whenAllSucceed(futures, on: loop)
    }

    /// Offers a command to the connections round-robin, starting at the next one, until one is up
    /// and takes it (`send` answers non-nil); nil when none did.
    private func firstTaker<Taken>(_ timeout: TimeAmount?, _ send: (RedisConnection, TimeAmount) -> Taken?) -> Taken? {
        let n = connections.count
        let start = nextIndex.wrappingAdd(1, ordering: .relaxed).oldValue
        let t = timeout ?? configuration.commandTimeout
        for k in 0..<n {
            if let taken = send(connections[(start &+ k) % n], t) { return taken }
        }
        return nil
    }

    /// Why no connection took a command.
    private var unavailable: RedisError { isShutDown ? .poolClosed : .notConnected }

    public func send(_ arguments: [String], timeout: TimeAmount? = nil) async throws -> RESPValue {
        try await send(arguments, timeout: timeout).get()
    }

    /// The event loop of the next connection in round-robin order (for futures made without I/O).
    public func nextEventLoop() -> any EventLoop {
        connections[nextIndex.load(ordering: .relaxed) % connections.count].eventLoop
    }

    /// Connections up and accepting commands right now.
    public var connectedCount: Int { connections.filter(\.isReady).count }

    private var isShutDown: Bool { connections.allSatisfy(\.isShutDown) }

    /// Closes every connection and stops reconnecting; commands in flight fail.
    public func shutdown() -> EventLoopFuture<Void> {
        let futures = connections.map { $0.shutdown() }
        return EventLoopFuture.andAllComplete(futures, on: connections[0].eventLoop)
    }

    public func shutdown() async {
        try? await shutdown().get()
    }
}

/// One connection slot of the pool: connects, reconnects with backoff, batches commands.
final class RedisConnection: Sendable {
    let eventLoop: any EventLoop
    private let configuration: RedisConfiguration
    private let tls: Result<TLSClientContext, RedisError>?
    private let state = Mutex(State())

    private enum Phase {
        case idle
        case connecting
        /// Up: batches go straight to the channel's handler, on this connection's loop.
        case ready(any Channel, NIOLoopBound<RedisChannelHandler>)
        case waiting(Scheduled<Void>)
        case shutDown
    }

    private struct State {
        var phase: Phase = .idle
        /// Consecutive failed connection attempts (0 after a connection worked).
        var failures = 0
        /// Commands accepted for the ready channel, written at the next drain.
        var outbox: [RedisRequest] = []
        /// The last drained batch's storage, emptied: the next drain swaps it in for the outbox,
        /// so neither list is copied or reallocated per batch.
        var spare: [RedisRequest] = []
        var drainScheduled = false
    }

    init(configuration: RedisConfiguration, tls: Result<TLSClientContext, RedisError>?, eventLoop: any EventLoop) {
        self.configuration = configuration
        self.tls = tls
        self.eventLoop = eventLoop
    }

    var isReady: Bool {
        state.withLock { if case .ready = $0.phase { true } else { false } }
    }

    var isShutDown: Bool {
        state.withLock { if case .shutDown = $0.phase { true } else { false } }
    }

    func start() {
        eventLoop.execute { self.connect() }
    }

    /// Queues one command when this connection is up; nil when it is not (the pool tries another).
    func send(_ arguments: [String], timeout: TimeAmount, replyBy: NIODeadline? = nil) -> EventLoopFuture<RESPValue>? {
        let promise = eventLoop.makePromise(of: RESPValue.self)
        guard self.enqueue(RedisRequest(arguments: arguments, reply: .promise(promise), timeout: timeout, replyBy: replyBy)) else {
            // Not queued: nobody else holds the promise, and an unfulfilled one must not leak.
            promise.fail(RedisError.notConnected)
            return nil
        }
        return promise.futureResult
    }

    /// Queues one command whose reply goes to `onReply`; false (and `onReply` not kept) when this
    /// connection is not up.
    func send(
        _ arguments: [String], timeout: TimeAmount, replyBy: NIODeadline?,
        onReply: @escaping @Sendable (Result<RESPValue, any Error>) -> Void
    ) -> Bool {
        self.enqueue(RedisRequest(arguments: arguments, reply: .callback(onReply), timeout: timeout, replyBy: replyBy))
    }

    private func enqueue(_ request: RedisRequest) -> Bool {
        let taken: (queued: Bool, drain: Bool) = state.withLock { s in
            guard case .ready = s.phase else { return (false, false) }
            s.outbox.append(request)
            if s.drainScheduled { return (true, false) }
            s.drainScheduled = true
            return (true, true)
        }
        // Runs after everything else queued in this tick: one batch, one flush.
        if taken.drain { eventLoop.execute { self.drain() } }
        return taken.queued
    }

    /// Queues commands when this connection is up; nil when it is not (the pool tries another).
    func send(_ commands: [[String]], timeout: TimeAmount) -> [EventLoopFuture<RESPValue>]? {
        enum Action { case notReady, queued([EventLoopFuture<RESPValue>]), scheduleDrain([EventLoopFuture<RESPValue>]) }
        let action: Action = state.withLock { s in
            guard case .ready = s.phase else { return .notReady }
            var futures: [EventLoopFuture<RESPValue>] = []
            futures.reserveCapacity(commands.count)
            for arguments in commands {
                let promise = eventLoop.makePromise(of: RESPValue.self)
                s.outbox.append(RedisRequest(arguments: arguments, reply: .promise(promise), timeout: timeout))
                futures.append(promise.futureResult)
            }
            if s.drainScheduled { return .queued(futures) }
            s.drainScheduled = true
            return .scheduleDrain(futures)
        }
        switch action {
        case .notReady:
            return nil
        case .queued(let future):
            return future
        case .scheduleDrain(let future):
            // Runs after everything else queued in this tick: one batch, one flush.
            eventLoop.execute { self.drain() }
            return future
        }
    }

    /// Writes everything queued since the last drain as one batch with one flush, handed to the
    /// channel's handler directly (on this loop): no pipeline pass, promise or callback per batch.
    /// Commands queued for a connection that has since gone are failed here.
    private func drain() {
        let (batch, handler): ([RedisRequest], NIOLoopBound<RedisChannelHandler>?) = state.withLock { s in
            s.drainScheduled = false
            var batch = s.spare
            s.spare = []
            swap(&batch, &s.outbox)
            guard case .ready(_, let handler) = s.phase else { return (batch, nil) }
            return (batch, handler)
        }
        guard !batch.isEmpty else { return }
        if let handler {
            handler.value.send(batch)
        } else {
            for r in batch { r.reply.fail(RedisError.connectionClosed) }
        }
        var emptied = batch
        emptied.removeAll(keepingCapacity: true)
        state.withLock { s in
            if s.spare.capacity < emptied.capacity { s.spare = emptied }
        }
    }

    private func connect() {
        let go: Bool = state.withLock { s in
            if case .shutDown = s.phase { return false }
            s.phase = .connecting
            return true
        }
        guard go else { return }
        let config = configuration
        let tlsContext: TLSClientContext?
        switch tls {
        case .failure(let error):
            eventLoop.execute { self.connected(.failure(error)) }
            return
        case .success(let context): tlsContext = context
        case nil: tlsContext = nil
        }
        // TCP connect, TLS handshake, AUTH and SELECT all within one connect_timeout.
        let deadline = NIODeadline.now() + config.connectTimeout
        let verifiedName = config.tls?.serverName ?? config.host
        ClientBootstrap(group: eventLoop)
            .connectTimeout(config.connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext {
                        try channel.pipeline.syncOperations.addHandler(TLSClientHandler(
                            context: tlsContext, host: verifiedName, hostIsIPAddress: RedisTLSContext.isIPAddress(verifiedName)))
                    }
                    try channel.pipeline.syncOperations.addHandler(RedisChannelHandler())
                }
            }
            .connect(host: config.host, port: config.port)
            .flatMap { channel in
                Self.handshake(channel, config, deadline: deadline).flatMapThrowing { () -> (any Channel, NIOLoopBound<RedisChannelHandler>) in
                    let handler = try channel.pipeline.syncOperations.handler(type: RedisChannelHandler.self)
                    return (channel, NIOLoopBound(handler, eventLoop: channel.eventLoop))
                }.flatMapError { error in
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .whenComplete { result in self.connected(result) }
    }

    /// AUTH and SELECT, pipelined, before the connection is offered to callers.
    private static func handshake(_ channel: any Channel, _ config: RedisConfiguration, deadline: NIODeadline) -> EventLoopFuture<Void> {
        let commands = config.handshake
        guard !commands.isEmpty else { return channel.eventLoop.makeSucceededVoidFuture() }
        let remaining = max(deadline - NIODeadline.now(), .milliseconds(1))
        let promises = commands.map { _ in channel.eventLoop.makePromise(of: RESPValue.self) }
        let requests = zip(commands, promises).map { RedisRequest(arguments: $0, reply: .promise($1), timeout: remaining) }
        channel.writeAndFlush(RedisRequestBatch(requests: requests), promise: nil)
        let replies = promises.map(\.futureResult)
        return EventLoopFuture.whenAllSucceed(replies, on: channel.eventLoop).flatMapThrowing { values in
            for (cmd, value) in zip(commands, values) {
                if case .error(let message) = value {
                    // The server's message, never the command (it holds the password).
                    throw RedisError.handshakeFailed.with("\(cmd[0]): \(message)")
                }
            }
        }
    }

    private func connected(_ result: Result<(any Channel, NIOLoopBound<RedisChannelHandler>), any Error>) {
        enum Action { case close(any Channel), watch(any Channel), retry(TimeAmount), nothing }
        var recovered = false, firstFailure = false
        let action: Action = state.withLock { s in
            if case .shutDown = s.phase {
                if case .success(let (ch, _)) = result { return .close(ch) }
                return .nothing
            }
            switch result {
            case .success(let (ch, handler)):
                s.phase = .ready(ch, handler)
                recovered = s.failures > 0
                s.failures = 0
                return .watch(ch)
            case .failure:
                s.failures += 1
                firstFailure = s.failures == 1
                return .retry(backoff(failures: s.failures))
            }
        }
        if let onEvent = configuration.onEvent {
            if recovered { onEvent(.recovered(node: configuration.address)) }
            if firstFailure, case .failure(let error) = result {
                onEvent(.connectFailed(node: configuration.address, reason: "\(error)"))
            }
        }
        switch action {
        case .close(let ch): ch.close(promise: nil)
        case .watch(let ch): ch.closeFuture.whenComplete { _ in self.closed(ch) }
        case .retry(let delay): scheduleReconnect(after: delay)
        case .nothing: break
        }
    }

    private func closed(_ channel: any Channel) {
        let reconnect: Bool = state.withLock { s in
            guard case .ready(let current, _) = s.phase, current === channel else { return false }
            s.phase = .idle
            return true
        }
        // A connection that worked is replaced at once; backoff starts if that fails.
        if reconnect { scheduleReconnect(after: .zero) }
    }

    /// Called on `eventLoop` only, where `scheduleTask` just files the task: keeping it under the
    /// lock lets `shutdown()` always find and cancel it.
    private func scheduleReconnect(after delay: TimeAmount) {
        state.withLock { s in
            if case .shutDown = s.phase { return }
            let task = eventLoop.scheduleTask(in: delay) { self.connect() }
            s.phase = .waiting(task)
        }
    }

    /// initial × 2^(failures-1), capped.
    private func backoff(failures: Int) -> TimeAmount {
        let initial = configuration.reconnectBackoffInitial.nanoseconds
        let cap = configuration.reconnectBackoffMax.nanoseconds
        let shift = min(failures - 1, 30)
        return .nanoseconds(min(cap, initial << Int64(shift)))
    }

    func shutdown() -> EventLoopFuture<Void> {
        let old: Phase = state.withLock { s in
            let p = s.phase
            s.phase = .shutDown
            return p
        }
        switch old {
        case .ready(let ch, _): return ch.close().recover { _ in }
        case .waiting(let task): task.cancel()
        default: break
        }
        return eventLoop.makeSucceededVoidFuture()
    }
}

/// The TLS context a pool's connections share, made once from `RedisConfiguration.tls`.
enum RedisTLSContext {
    static func make(_ configuration: RedisConfiguration) -> Result<TLSClientContext, RedisError>? {
        guard let tls = configuration.tls else { return nil }
        do {
            return .success(try TLSClientContext(
                alpn: [], insecure: !tls.verify, caFile: tls.caFile,
                certificateFile: tls.certificateFile, keyFile: tls.keyFile, verificationHint: ""))
        } catch {
            return .failure(RedisError.tlsSetupFailed.with("\(error)"))
        }
    }

    /// Address literals get no SNI and are matched against the certificate's IP SANs.
    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }
}
