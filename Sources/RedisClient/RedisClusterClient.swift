import NIOCore
import Synchronization
import TLSClient

/// Redis Cluster: one pipelined `RedisConnectionPool` per master, commands routed by the key's
/// hash slot through a slot map read with `CLUSTER SHARDS` (`CLUSTER SLOTS` on servers before 7).
///
/// - `MOVED` updates the slot's owner, starts a background map refresh and retries once on the
///   new owner; `ASK` sends that one command to the named node preceded by `ASKING` (the slot is
///   migrating; the map is left alone).
/// - Nothing waits for the map or for a node: a slot whose owner has no connection up fails at
///   once (`RedisError.notConnected` from its pool, `RedisError.noRoute` before the first map),
///   and a refresh is started in the background. Callers with a deadline (the rate limiter) take
///   their own failure path immediately.
/// - Refreshes run one at a time and at most every `minimumRefreshInterval`, so a node that is
///   down does not turn every failed command into a `CLUSTER SHARDS`.
/// - The credentials, database 0, TLS and timeouts of `configuration` apply to every node; its
///   host and port are ignored.
public final class RedisClusterClient: RedisCommandSender {
    public let configuration: RedisConfiguration
    private let seeds: [(host: String, port: Int)]
    private let group: any EventLoopGroup
    private let tls: Result<TLSClientContext, RedisError>?
    private let state = Mutex(State())
    private let minimumRefreshInterval: TimeAmount = .milliseconds(100)

    /// Redirections and refreshes so far (health and metrics).
    public let movedCount = Atomic<Int>(0)
    public let askCount = Atomic<Int>(0)
    public let refreshCount = Atomic<Int>(0)

    private struct State {
        var pools: [String: RedisConnectionPool] = [:]
        /// Per slot, the address of its master; empty until the first map.
        var owners: [String?] = []
        var refreshing = false
        var lastRefresh: NIODeadline?
        var retry: Scheduled<Void>?
        var retryDelay: TimeAmount = .milliseconds(20)
        var shutDown = false
    }

    /// Starts connecting to `seeds` and reading the slot map in the background.
    public init(configuration: RedisConfiguration, seeds: [(host: String, port: Int)], eventLoopGroup: any EventLoopGroup) {
        precondition(!seeds.isEmpty, "a cluster needs at least one seed node")
        self.configuration = configuration
        self.seeds = seeds
        self.group = eventLoopGroup
        self.tls = RedisTLSContext.make(configuration)
        state.withLock { s in
            for seed in seeds { _ = self.pool(for: seed.host, seed.port, in: &s) }
        }
        refresh(force: true)
    }

    // MARK: commands

    public func send(commands: [[String]], key: String?, timeout: TimeAmount?) -> EventLoopFuture<[RESPValue]> {
        let slot = key.map(RedisClusterSlots.slot(for:))
        guard let pool = route(slot) else {
            refresh(force: false)
            return group.next().makeFailedFuture(state.withLock { $0.shutDown } ? RedisError.poolClosed : RedisError.noRoute)
        }
        // One promise per command on the common path (no redirect): this runs once per decision.
        let promise = pool.nextEventLoop().makePromise(of: [RESPValue].self)
        pool.send(commands: commands, timeout: timeout).whenComplete { result in
            switch result {
            case .success(let replies):
                if replies.contains(where: { RedisClusterSlots.redirect($0) != nil }) {
                    self.followRedirect(replies, commands, from: pool, timeout: timeout).cascade(to: promise)
                } else {
                    promise.succeed(replies)
                }
            case .failure(let error):
                if let e = error as? RedisError, e != .poolClosed { self.refresh(force: false) }
                promise.fail(error)
            }
        }
        return promise.futureResult
    }

    /// At most one redirection is followed: a second would mean the map is changing under us,
    /// and the caller's deadline is better spent failing.
    private func followRedirect(
        _ replies: [RESPValue], _ commands: [[String]], from pool: RedisConnectionPool, timeout: TimeAmount?
    ) -> EventLoopFuture<[RESPValue]> {
        guard let redirect = replies.lazy.compactMap(RedisClusterSlots.redirect).first else {
            return pool.nextEventLoop().makeSucceededFuture(replies)
        }
        switch redirect {
        case .moved(let slot, let host, let port):
            let target = host.isEmpty ? pool.configuration.host : host
            movedCount.wrappingAdd(1, ordering: .relaxed)
            let next: RedisConnectionPool = state.withLock { s in
                let p = self.pool(for: target, port, in: &s)
                if s.owners.count == RedisClusterSlots.count { s.owners[slot] = p.configuration.address }
                return p
            }
            configuration.onEvent?(.moved(slot: slot, to: next.configuration.address))
            refresh(force: true)
            return next.send(commands: commands, timeout: timeout)
        case .ask(let slot, let host, let port):
            let target = host.isEmpty ? pool.configuration.host : host
            askCount.wrappingAdd(1, ordering: .relaxed)
            let next = state.withLock { s in self.pool(for: target, port, in: &s) }
            configuration.onEvent?(.ask(slot: slot, to: next.configuration.address))
            // ASKING is good for the one command after it, so each command gets its own.
            let asked = commands.flatMap { [["ASKING"], $0] }
            return next.send(commands: asked, timeout: timeout).map { all in
                stride(from: 1, to: all.count, by: 2).map { all[$0] }
            }
        }
    }

    /// The pool of the slot's master; any pool with a connection for key-less commands.
    private func route(_ slot: Int?) -> RedisConnectionPool? {
        state.withLock { s in
            guard !s.shutDown else { return nil }
            guard let slot else {
                return s.pools.values.first { $0.connectedCount > 0 } ?? s.pools.values.first
            }
            guard s.owners.count == RedisClusterSlots.count, let owner = s.owners[slot] else { return nil }
            return s.pools[owner]
        }
    }

    /// The pool for `host:port`, created (and connecting) when new. Called under the lock: pool
    /// creation only schedules work on event loops.
    private func pool(for host: String, _ port: Int, in s: inout State) -> RedisConnectionPool {
        let config = configuration.with(host: host, port: port)
        if let p = s.pools[config.address] { return p }
        let p = RedisConnectionPool(configuration: config, eventLoopGroup: group, tls: tls, role: "master")
        s.pools[config.address] = p
        return p
    }

    // MARK: slot map

    /// Reads the slot map in the background. `force` skips the minimum interval (a `MOVED` is
    /// proof the map is stale); a refresh already running is never doubled.
    func refresh(force: Bool) {
        let now = NIODeadline.now()
        let candidates: [RedisConnectionPool]? = state.withLock { s in
            guard !s.shutDown, !s.refreshing else { return nil }
            if !force, let last = s.lastRefresh, now - last < minimumRefreshInterval { return nil }
            s.refreshing = true
            s.lastRefresh = now
            // Connected nodes first; the seeds are in the list too, so a cluster whose map named
            // only nodes that have since gone can still be found again.
            return s.pools.values.sorted { $0.connectedCount > $1.connectedCount }
        }
        guard let candidates else { return }
        ask(candidates[...])
    }

    private func ask(_ candidates: ArraySlice<RedisConnectionPool>) {
        guard let pool = candidates.first(where: { $0.connectedCount > 0 }) else {
            refreshFailed()
            return
        }
        let rest = candidates.drop { $0 !== pool }.dropFirst()
        let timeout = configuration.commandTimeout
        pool.send(commands: [["CLUSTER", "SHARDS"]], timeout: timeout).flatMap { replies -> EventLoopFuture<[RedisClusterSlots.Range]?> in
            if replies[0].errorMessage == nil {
                return pool.nextEventLoop().makeSucceededFuture(
                    RedisClusterSlots.fromShards(replies[0], tls: self.configuration.tls != nil))
            }
            return pool.send(commands: [["CLUSTER", "SLOTS"]], timeout: timeout).map { RedisClusterSlots.fromSlots($0[0]) }
        }.whenComplete { result in
            if case .success(let ranges?) = result, !ranges.isEmpty {
                self.apply(ranges, from: pool.configuration.address)
            } else {
                self.ask(rest)
            }
        }
    }

    private func apply(_ ranges: [RedisClusterSlots.Range], from source: String) {
        var masters = Set<String>()
        let retired: [RedisConnectionPool] = state.withLock { s in
            s.refreshing = false
            s.retryDelay = .milliseconds(20)
            guard !s.shutDown else { return [] }
            var owners = [String?](repeating: nil, count: RedisClusterSlots.count)
            for r in ranges where r.first >= 0 && r.last < RedisClusterSlots.count && r.first <= r.last {
                let address = self.pool(for: r.host, r.port, in: &s).configuration.address
                masters.insert(address)
                for slot in r.first...r.last { owners[slot] = address }
            }
            s.owners = owners
            // Pools of nodes that serve nothing are closed, except the seeds (the way back in
            // when every mapped node is gone).
            let seedAddresses = Set(seeds.map { configuration.with(host: $0.host, port: $0.port).address })
            let gone = s.pools.filter { !masters.contains($0.key) && !seedAddresses.contains($0.key) }
            for address in gone.keys { s.pools[address] = nil }
            return Array(gone.values)
        }
        for p in retired { _ = p.shutdown() }
        refreshCount.wrappingAdd(1, ordering: .relaxed)
        configuration.onEvent?(.clusterMapRefreshed(from: source, masters: masters.count))
    }

    /// No node answered: until a first map exists, try again with a growing delay (the nodes
    /// may still be connecting); afterwards the next failed command asks again.
    private func refreshFailed() {
        let loop = group.next()
        state.withLock { s in
            s.refreshing = false
            guard !s.shutDown, s.owners.isEmpty else { return }
            let delay = s.retryDelay
            s.retryDelay = .nanoseconds(min(delay.nanoseconds * 2, configuration.reconnectBackoffMax.nanoseconds))
            s.retry = loop.scheduleTask(in: delay) { self.refresh(force: true) }
        }
    }

    // MARK: status

    public func nextEventLoop() -> any EventLoop { group.next() }

    /// The slot map's masters (and seeds not in it), with their slot counts.
    public var nodeStates: [RedisNodeState] {
        let (pools, owners) = state.withLock { ($0.pools, $0.owners) }
        var slots: [String: Int] = [:]
        for case let owner? in owners { slots[owner, default: 0] += 1 }
        return pools.keys.sorted().map { address in
            RedisNodeState(address: address, role: "master", connections: pools[address]!.connectedCount,
                           slots: slots[address] ?? 0)
        }
    }

    /// Whether a slot map has been read.
    public var hasSlotMap: Bool { state.withLock { !$0.owners.isEmpty } }

    public func shutdown() -> EventLoopFuture<Void> {
        let pools: [RedisConnectionPool] = state.withLock { s in
            s.shutDown = true
            s.retry?.cancel()
            return Array(s.pools.values)
        }
        let loop = group.next()
        return EventLoopFuture.andAllComplete(pools.map { $0.shutdown() }, on: loop)
    }
}
