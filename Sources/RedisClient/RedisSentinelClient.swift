import NIOCore
import Synchronization
import TLSClient

/// The master of a Redis Sentinel set: asks the sentinels (`SENTINEL get-master-addr-by-name`)
/// where the master is, keeps one pipelined `RedisConnectionPool` to it, and moves to the new
/// master when the sentinels name another one.
///
/// Rediscovery happens on a timer (`pollInterval`) and at once when a command fails or the
/// server answers `READONLY` (a demoted master) — the two signs of a failover seen from the
/// client. The timer stands in for a `+switch-master` subscription: the pipelined connection
/// carries request/reply traffic only, and a failed command already triggers the same lookup.
/// Commands never wait for discovery: with no master known they fail at once with
/// `RedisError.noRoute`.
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
        let (poll, master): (RepeatedTask?, RedisConnectionPool?) = state.withLock { s in
            s.shutDown = true
            let r = (s.poll, s.master)
            s.poll = nil
            s.master = nil
            return r
        }
        poll?.cancel()
        let pools = sentinels + (master.map { [$0] } ?? [])
        return EventLoopFuture.andAllComplete(pools.map { $0.shutdown() }, on: group.next())
    }
}
