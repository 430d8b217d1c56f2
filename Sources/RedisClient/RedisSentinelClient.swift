import NIOCore
import NIOPosix
import Synchronization
import TLSClient

/// The master of a Redis Sentinel set: asks the sentinels (`SENTINEL get-master-addr-by-name`)
/// where the master is, keeps one pipelined `RedisConnectionPool` to it, and moves to the new
/// master when the sentinels name another one.
///
/// The switch is learnt three ways: a `+switch-master` message on a subscription to the first
/// reachable sentinel (the moment Sentinel announces it), a lookup when a command fails or the
/// server answers `READONLY` (a demoted master), and a lookup every `pollInterval` (a missed
/// message while the subscription reconnects). Lookups and the subscription go to the
/// sentinels in the same order, so two sentinels that disagree for a moment do not make the
/// client flip between masters. Commands never wait for discovery: with no master known they
/// fail at once with `RedisError.noRoute`.
///
/// Sentinels are reached with the TLS settings of `configuration` but without its credentials
/// or database (those belong to the master).
public final class RedisSentinelClient: RedisCommandSender {
    public let configuration: RedisConfiguration
    public let masterName: String
    public let pollInterval: TimeAmount
    private let group: any EventLoopGroup
    private let tls: Result<TLSClientContext, RedisError>?
    private let sentinels: [RedisConnectionPool]
    private let state = Mutex(State())
    /// Masters switched to since start (health and metrics).
    public let switchCount = Atomic<Int>(0)

    private struct State {
        var master: RedisConnectionPool?
        var subscription: (any Channel)?
        var resubscribe: Scheduled<Void>?
        var asking = false
        var lastAsked: NIODeadline?
        var poll: RepeatedTask?
        var shutDown = false
    }

    public init(configuration: RedisConfiguration, sentinels: [(host: String, port: Int)], masterName: String,
                eventLoopGroup: any EventLoopGroup, pollInterval: TimeAmount = .milliseconds(500)) {
        precondition(!sentinels.isEmpty, "Sentinel mode needs at least one sentinel")
        self.configuration = configuration
        self.masterName = masterName
        self.pollInterval = pollInterval
        self.group = eventLoopGroup
        let tls = RedisTLSContext.make(configuration)
        self.tls = tls
        var sentinelConfig = configuration
        sentinelConfig.username = nil
        sentinelConfig.password = nil
        sentinelConfig.database = 0
        sentinelConfig.poolSize = 1
        self.sentinels = sentinels.map {
            RedisConnectionPool(configuration: sentinelConfig.with(host: $0.host, port: $0.port),
                                eventLoopGroup: eventLoopGroup, tls: tls, role: "sentinel")
        }
        let task = group.next().scheduleRepeatedTask(initialDelay: .milliseconds(10), delay: pollInterval) { [weak self] _ in
            self?.discover(force: true)
        }
        state.withLock { $0.poll = task }
        subscribe(sentinel: 0)
    }

    // MARK: +switch-master

    /// Subscribes on sentinel `index`; when that connection fails or ends, the next sentinel is
    /// tried after a short pause (the first one again after the last).
    private func subscribe(sentinel index: Int) {
        let pool = sentinels[index % sentinels.count]
        let tlsContext = try? tls?.get()
        let name = pool.configuration.tls?.serverName ?? pool.configuration.host
        let loop = group.next()
        ClientBootstrap(group: loop)
            .connectTimeout(configuration.connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext {
                        try channel.pipeline.syncOperations.addHandler(TLSClientHandler(
                            context: tlsContext, host: name, hostIsIPAddress: RedisTLSContext.isIPAddress(name)))
                    }
                    try channel.pipeline.syncOperations.addHandler(SentinelSwitchHandler { [weak self] master, host, port in
                        guard let self, master == self.masterName else { return }
                        self.use(host: host, port: port)
                    })
                }
            }
            .connect(host: pool.configuration.host, port: pool.configuration.port)
            .whenComplete { result in
                let next = index + 1
                switch result {
                case .success(let channel):
                    let keep: Bool = self.state.withLock { s in
                        guard !s.shutDown else { return false }
                        s.subscription = channel
                        return true
                    }
                    guard keep else { channel.close(promise: nil); return }
                    // The sentinel that stays up keeps the subscription; a lost one hands over.
                    channel.closeFuture.whenComplete { _ in self.resubscribe(next, after: .milliseconds(100)) }
                case .failure:
                    self.resubscribe(next, after: .milliseconds(200))
                }
            }
    }

    private func resubscribe(_ index: Int, after delay: TimeAmount) {
        let loop = group.next()
        state.withLock { s in
            s.subscription = nil
            guard !s.shutDown else { return }
            s.resubscribe = loop.scheduleTask(in: delay) { self.subscribe(sentinel: index) }
        }
    }

    public func send(commands: [[String]], key: String?, timeout: TimeAmount?) -> EventLoopFuture<[RESPValue]> {
        guard let master = state.withLock({ $0.master }) else {
            discover(force: false)
            return group.next().makeFailedFuture(RedisError.noRoute.with("no master known for \(masterName) yet"))
        }
        return master.send(commands: commands, timeout: timeout).map { replies in
            if replies.contains(where: { $0.errorMessage?.hasPrefix("READONLY") == true }) { self.discover(force: false) }
            return replies
        }.flatMapErrorThrowing { error in
            self.discover(force: false)
            throw error
        }
    }

    /// Asks the sentinels, one after the other until one answers, for the master's address.
    /// Triggered lookups run at most every 50 ms and never two at a time.
    private func discover(force: Bool) {
        let now = NIODeadline.now()
        let go: Bool = state.withLock { s in
            guard !s.shutDown, !s.asking else { return false }
            if !force, let last = s.lastAsked, now - last < .milliseconds(50) { return false }
            s.asking = true
            s.lastAsked = now
            return true
        }
        if go { ask(sentinels[...]) }
    }

    private func ask(_ remaining: ArraySlice<RedisConnectionPool>) {
        guard let sentinel = remaining.first(where: { $0.connectedCount > 0 }) else {
            state.withLock { $0.asking = false }
            return
        }
        let rest = remaining.drop { $0 !== sentinel }.dropFirst()
        sentinel.send(commands: [["SENTINEL", "get-master-addr-by-name", masterName]], timeout: configuration.commandTimeout)
            .whenComplete { result in
                if case .success(let replies) = result, let pair = replies[0].array, pair.count == 2,
                   let host = pair[0].string, let port = pair[1].string.flatMap({ Int($0) }) {
                    self.use(host: host, port: port)
                } else {
                    self.ask(rest)
                }
            }
    }

    private func use(host: String, port: Int) {
        let config = configuration.with(host: host, port: port)
        let (old, switched): (RedisConnectionPool?, Bool) = state.withLock { s in
            s.asking = false
            guard !s.shutDown else { return (nil, false) }
            if let current = s.master, current.configuration.address == config.address { return (nil, false) }
            let old = s.master
            s.master = RedisConnectionPool(configuration: config, eventLoopGroup: group, tls: tls, role: "master")
            return (old, true)
        }
        guard switched else { return }
        _ = old?.shutdown()
        if old != nil { switchCount.wrappingAdd(1, ordering: .relaxed) }
        configuration.onEvent?(.masterSwitched(name: masterName, to: config.address))
    }

    public func nextEventLoop() -> any EventLoop { group.next() }

    /// The master, then the sentinels.
    public var nodeStates: [RedisNodeState] {
        let master = state.withLock { $0.master }
        return (master.map { $0.nodeStates } ?? []) + sentinels.flatMap(\.nodeStates)
    }

    /// The master's address, once known.
    public var masterAddress: String? { state.withLock { $0.master?.configuration.address } }

    public func shutdown() -> EventLoopFuture<Void> {
        let (poll, master, subscription): (RepeatedTask?, RedisConnectionPool?, (any Channel)?) = state.withLock { s in
            s.shutDown = true
            s.resubscribe?.cancel()
            let r = (s.poll, s.master, s.subscription)
            s.poll = nil
            s.master = nil
            s.subscription = nil
            return r
        }
        poll?.cancel()
        subscription?.close(promise: nil)
        let pools = sentinels + (master.map { [$0] } ?? [])
        return EventLoopFuture.andAllComplete(pools.map { $0.shutdown() }, on: group.next())
    }
}

/// A `SUBSCRIBE +switch-master` connection to one sentinel: reports each announced switch as
/// (master name, new host, new port). Payload: `<name> <old-ip> <old-port> <new-ip> <new-port>`.
final class SentinelSwitchHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let onSwitch: @Sendable (String, String, Int) -> Void
    private var parser: RESPParser?

    init(onSwitch: @escaping @Sendable (String, String, Int) -> Void) {
        self.onSwitch = onSwitch
    }

    func handlerAdded(context: ChannelHandlerContext) {
        parser = RESPParser()
        if context.channel.isActive { subscribe(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        parser?.close()
        parser = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        subscribe(context: context)
        context.fireChannelActive()
    }

    private func subscribe(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        RESPEncoder.encode(["SUBSCRIBE", "+switch-master"], into: &buffer)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let parser else { return }
        do {
            try parser.feed(unwrapInboundIn(data))
            while let value = try parser.next() {
                guard let items = value.array, items.count == 3, items[0].string == "message",
                      let payload = items[2].string else { continue }
                let fields = payload.split(separator: " ")
                if fields.count == 5, let port = Int(fields[4]) {
                    onSwitch(String(fields[0]), String(fields[3]), port)
                }
            }
        } catch {
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
