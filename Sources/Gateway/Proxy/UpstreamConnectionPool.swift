import NIOCore
import NIOHTTP1
import NIOPosix

/// Why no upstream connection could be had.
enum UpstreamAcquireError: Error {
    case connectFailed(Error)
    /// `max_connections` reached and none freed up within `connect_timeout`.
    case poolExhausted
}

/// Keep-alive connections of one event loop to every upstream endpoint. Connections are created on
/// the client's own loop, so a proxied request never hops threads; `max_connections` is shared
/// across loops through the endpoint's atomic counter.
final class UpstreamConnectionPool {
    private struct Waiter {
        var promise: EventLoopPromise<UpstreamConnection>
        var deadline: NIODeadline
    }

    /// Requests on this loop waiting for a slot to one endpoint, oldest first, and the one timer
    /// that fails them after `connect_timeout`. A class, so a request joining or leaving the
    /// queue changes it in place: a queue copied out of the dictionary, changed and stored back
    /// cost a copy of every waiter per request served, which made an overloaded upstream's queue
    /// quadratic. Waiters of one endpoint come with the same timeout, so the oldest is due
    /// first: the timer is armed for it and, when it fires, re-armed for the new oldest (after a
    /// reload that shortens the timeout, newer waiters are failed with the older ones, at most
    /// the difference late).
    private final class WaiterQueue: LoopTimerOwner {
        var waiters = CircularBuffer<Waiter>()
        var timer: LoopTimers.Timer?
        /// `max_connections` of the newest waiter's settings: what the loops' shares divide.
        var maxConnections = 1
        unowned let pool: UpstreamConnectionPool
        let endpoint: UpstreamEndpoint

        init(pool: UpstreamConnectionPool, endpoint: UpstreamEndpoint) {
            self.pool = pool
            self.endpoint = endpoint
        }

        func timerFired(_ timer: LoopTimers.Timer, tag: NIODeadline) {
            guard timer == self.timer else { return }
            self.timer = nil
            self.pool.failExpiredWaiters(self)
        }
    }

    /// Opens a channel to an endpoint, its pipeline set up by `addHandlers(to:ending:)` so that it
    /// ends in the given handler. Tests substitute in-memory channels.
    typealias Connector = (UpstreamEndpoint, UpstreamSettings, UpstreamConnectionHandler) -> EventLoopFuture<Channel>

    let eventLoop: EventLoop
    /// The loop's timers, for its connections' deadlines.
    let timers: LoopTimers
    /// The loop's end-of-tick flushes, for the requests written to its connections.
    let flushes: TickFlushes
    private let connector: Connector
    /// Per endpoint, most recently used last. A class, so taking and giving back a connection
    /// reads the dictionary instead of modifying it in place.
    private final class IdleStack {
        var connections: [UpstreamConnection] = []
    }
    private var idle: [ObjectIdentifier: IdleStack] = [:]
    /// The stack `idle` last gave (entries are never replaced, only all dropped at close): a
    /// request to the same endpoint as the last one, the common case, hashes no key.
    private var lastIdle: (key: ObjectIdentifier, stack: IdleStack)?
    private var waiters: [ObjectIdentifier: WaiterQueue] = [:]
    /// Per endpoint: connections this loop opened and has not closed (or given away).
    private var openHere: [ObjectIdentifier: Int] = [:]
    private var isClosed = false
    /// Endpoints whose `EndpointPools` know this pool.
    private var joined: Set<ObjectIdentifier> = []
    private var id: ObjectIdentifier { ObjectIdentifier(self) }

    init(eventLoop: EventLoop, timers: LoopTimers? = nil, flushes: TickFlushes? = nil, connector: Connector? = nil) {
        self.eventLoop = eventLoop
        self.timers = timers ?? LoopTimers(eventLoop: eventLoop)
        self.flushes = flushes ?? TickFlushes(eventLoop: eventLoop)
        self.connector = connector ?? { endpoint, settings, handler in
            Self.connectSocket(endpoint, settings: settings, handler: handler, on: eventLoop)
        }
    }

    /// An idle connection (most recently used first, its TLS/TCP state warm) or a new one.
    /// `fresh` skips the idle ones: for the one retry of a request whose reused connection failed.
    func acquire(_ endpoint: UpstreamEndpoint, settings: UpstreamSettings, fresh: Bool = false) -> EventLoopFuture<UpstreamConnection> {
        if !fresh, let connection = self.takeIdle(endpoint) { return self.eventLoop.makeSucceededFuture(connection) }
        return self.open(endpoint, settings: settings)
    }

    /// The most recently used idle connection to `endpoint`, if one is still open both ways:
    /// the steady keep-alive case, answered without a future.
    ///
    /// `probeTCPState: false` skips reading the kernel's TCP state (a `getsockopt` per request,
    /// 3–4.5% of the gateway's CPU on a keep-alive load): for a request that is resent on a
    /// fresh connection anyway when a reused one dies before any response byte (idempotent and
    /// bodiless), a FIN the loop has not read yet costs one retry, not a failed request.
    func takeIdle(_ endpoint: UpstreamEndpoint, probeTCPState: Bool = true) -> UpstreamConnection? {
        self.eventLoop.preconditionInEventLoop()
        guard let stack = self.idleStack(ObjectIdentifier(endpoint)) else { return nil }
        while let connection = stack.connections.popLast() {
            connection.clearDeadline()
            if probeTCPState ? connection.isOpenBothWays : connection.channel.isActive { return connection }
            connection.close()
        }
        return nil
    }

    /// A new connection, or one released by another request within `connect_timeout` once
    /// `max_connections` is reached.
    func open(_ endpoint: UpstreamEndpoint, settings: UpstreamSettings) -> EventLoopFuture<UpstreamConnection> {
        self.eventLoop.preconditionInEventLoop()
        // While requests wait (here or on another loop), a new one queues behind them: a slot
        // freed for a waiter on another loop is not taken on the way by a newcomer here.
        if !endpoint.pools.someoneWaits, self.reserveSlot(endpoint, max: settings.maxConnections) {
            return self.connect(endpoint, settings: settings)
        }
        return self.wait(for: endpoint, settings: settings)
    }

    /// Gives a connection back. Non-reusable ones (framing broken, `Connection: close`, request
    /// not fully sent) are closed.
    func release(_ connection: UpstreamConnection, reusable: Bool, timeouts: UpstreamTimeouts) {
        connection.handler.owner = nil
        guard reusable, !self.isClosed, connection.channel.isActive, !connection.handler.sentUnaskedBytes else {
            connection.close()
            return
        }
        connection.hasServedRequests = true
        let key = ObjectIdentifier(connection.endpoint)
        // `waiters` stays empty until a request first waits: most pools never hash a key here.
        if !self.waiters.isEmpty, let queue = self.waiters[key], !queue.waiters.isEmpty {
            // Requests wait here and on another loop too: a loop holding more than its share of
            // `max_connections` gives a released connection to the other loop (closed here, its
            // slot opened there), so neither loop's requests starve. Before, the loop holding
            // the connections kept serving its own queue, and the other loop's requests waited
            // out `connect_timeout` and got 503 (100 of a 50-stream client's requests in a 2 s
            // load with two workers and 8 slots).
            if let excess = self.excessOverShare(queue), excess > 0 {
                connection.closedForAnotherLoop = true
                self.openHere[key, default: 0] -= 1
                connection.close()
                return
            }
            if let waiter = self.popWaiter(connection.endpoint) {
                waiter.promise.succeed(connection)
                return
            }
        }
        if connection.endpoint.pools.someoneWaits {
            // A request on another loop waits for a slot: this connection's is worth more there.
            connection.close()
            return
        }
        // Its close future takes it out of `idle` when it closes.
        connection.expireWhenIdle(timeouts)
        if let stack = self.idleStack(key) {
            stack.connections.append(connection)
        } else {
            let stack = IdleStack()
            stack.connections.append(connection)
            self.idle[key] = stack
            self.lastIdle = (key, stack)
        }
    }

    /// Closes every idle connection (shutdown).
    func closeAll() {
        self.isClosed = true
        for (_, stack) in self.idle {
            for connection in stack.connections {
                connection.close()
            }
        }
        self.idle.removeAll()
        self.lastIdle = nil
    }

    private func idleStack(_ key: ObjectIdentifier) -> IdleStack? {
        if let last = self.lastIdle, last.key == key { return last.stack }
        guard let stack = self.idle[key] else { return nil }
        self.lastIdle = (key, stack)
        return stack
    }

    private func removeIdle(_ handler: UpstreamConnectionHandler, endpoint: UpstreamEndpoint) {
        self.idleStack(ObjectIdentifier(endpoint))?.connections.removeAll { $0.handler === handler }
    }

    private func reserveSlot(_ endpoint: UpstreamEndpoint, max: Int) -> Bool {
        while true {
            let current = endpoint.openConnections.load(ordering: .relaxed)
            if current >= max { return false }
            if endpoint.openConnections.compareExchange(
                expected: current, desired: current + 1, ordering: .relaxed
            ).exchanged { return true }
        }
    }

    /// How a slot came free: a connect that failed, a connection that closed, or one the pool
    /// closed for another loop's waiting request (already counted out of `openHere`).
    private enum FreedSlot {
        case connectFailed
        case closed
        case closedForAnotherLoop
    }

    private func slotFreed(_ endpoint: UpstreamEndpoint, settings: UpstreamSettings, _ how: FreedSlot) {
        endpoint.openConnections.subtract(1, ordering: .relaxed)
        let key = ObjectIdentifier(endpoint)
        switch how {
        case .connectFailed:
            break
        case .closed:
            self.openHere[key, default: 0] -= 1
        case .closedForAnotherLoop:
            if endpoint.pools.waitingPoolCount > (self.waiters[key]?.waiters.isEmpty == false ? 1 : 0) {
                endpoint.pools.wakeOneWaiting(besides: self.id, for: endpoint)
                return
            }
        }
        if let queue = self.waiters[key], !queue.waiters.isEmpty {
            if let excess = self.excessOverShare(queue), excess >= 0 {
                endpoint.pools.wakeOneWaiting(besides: self.id, for: endpoint)
            } else {
                self.serveWaiter(endpoint, settings: settings)
            }
        } else if endpoint.pools.someoneWaits {
            endpoint.pools.wakeOneWaiting(besides: self.id, for: endpoint)
        }
    }

    /// How many connections this loop holds beyond its share of `max_connections`; nil while no
    /// other loop waits. With requests waiting here and on other loops, each loop's share is an
    /// equal part: a loop above it gives connections away as they are released, a loop at it
    /// gives freed slots away. Once the loops hold their shares, each serves its own queue with
    /// its own connections (no connection is closed to move a slot); with fewer slots than
    /// waiting loops, the slots go round.
    private func excessOverShare(_ queue: WaiterQueue) -> Int? {
        let waitingLoops = queue.endpoint.pools.waitingPoolCount
        guard waitingLoops > 1 else { return nil }
        return self.openHere[ObjectIdentifier(queue.endpoint), default: 0] - queue.maxConnections / waitingLoops
    }

    /// A waiter on this loop opens a connection of its own if a slot is free. With none waiting
    /// here any more (they timed out since the wake was sent), the wake goes on to another loop
    /// that waits: new requests queue while anyone waits, so a slot nobody takes stays free.
    private func serveWaiter(_ endpoint: UpstreamEndpoint, settings: UpstreamSettings) {
        guard self.waiters[ObjectIdentifier(endpoint)]?.waiters.isEmpty == false else {
            if endpoint.pools.someoneWaits { endpoint.pools.wakeOneWaiting(besides: self.id, for: endpoint) }
            return
        }
        guard self.reserveSlot(endpoint, max: settings.maxConnections), let waiter = self.popWaiter(endpoint) else { return }
        self.connect(endpoint, settings: settings).cascade(to: waiter.promise)
    }

    /// Closes the least recently used idle connection to `endpoint`, freeing its slot for a
    /// request waiting on another loop.
    private func shedIdle(_ endpoint: UpstreamEndpoint) {
        guard let stack = self.idleStack(ObjectIdentifier(endpoint)), !stack.connections.isEmpty else { return }
        let oldest = stack.connections.removeFirst()
        oldest.close()
    }

    private func popWaiter(_ endpoint: UpstreamEndpoint) -> Waiter? {
        guard let queue = self.waiters[ObjectIdentifier(endpoint)], let waiter = queue.waiters.popFirst() else { return nil }
        endpoint.stats.waiting.subtract(1, ordering: .relaxed)
        if queue.waiters.isEmpty {
            self.timers.disarm(&queue.timer)
            endpoint.pools.setWaiting(self.id, false)
        }
        return waiter
    }

    /// Fails the waiters whose `connect_timeout` passed, oldest first, and arms the queue's timer
    /// for the oldest left.
    private func failExpiredWaiters(_ queue: WaiterQueue) {
        let now = self.eventLoop.now
        while let oldest = queue.waiters.first, oldest.deadline <= now {
            queue.waiters.removeFirst()
            queue.endpoint.stats.waiting.subtract(1, ordering: .relaxed)
            if queue.waiters.isEmpty { queue.endpoint.pools.setWaiting(self.id, false) }
            oldest.promise.fail(UpstreamAcquireError.poolExhausted)
        }
        if let oldest = queue.waiters.first, queue.timer == nil {
            queue.timer = self.timers.arm(queue, in: oldest.deadline - now)
        }
    }

    /// Makes this pool known to the endpoint's other pools (once per endpoint).
    private func join(_ endpoint: UpstreamEndpoint, settings: UpstreamSettings) {
        guard self.joined.insert(ObjectIdentifier(endpoint)).inserted else { return }
        let reference = PoolReference(self)
        // The endpoint comes with each call rather than captured: the endpoint owns these closures.
        endpoint.pools.join(
            self.id,
            wake: { endpoint in reference.onLoop { pool in pool.serveWaiter(endpoint, settings: settings) } },
            shed: { endpoint in reference.onLoop { pool in pool.shedIdle(endpoint) } }
        )
    }

    private func wait(for endpoint: UpstreamEndpoint, settings: UpstreamSettings) -> EventLoopFuture<UpstreamConnection> {
        let promise = self.eventLoop.makePromise(of: UpstreamConnection.self)
        let key = ObjectIdentifier(endpoint)
        let queue: WaiterQueue
        if let existing = self.waiters[key] {
            queue = existing
        } else {
            queue = WaiterQueue(pool: self, endpoint: endpoint)
            self.waiters[key] = queue
        }
        queue.waiters.append(Waiter(promise: promise, deadline: self.eventLoop.now + settings.connectTimeout))
        queue.maxConnections = settings.maxConnections
        if queue.timer == nil {
            queue.timer = self.timers.arm(queue, in: settings.connectTimeout)
        }
        endpoint.stats.waiting.add(1, ordering: .relaxed)
        self.join(endpoint, settings: settings)
        if queue.waiters.count == 1 { endpoint.pools.setWaiting(self.id, true) }
        // Slots held by idle connections on other loops are freed for this request.
        endpoint.pools.askOthersToShed(besides: self.id, for: endpoint)
        return promise.futureResult
    }

    /// `handler` alone: it is the connection's HTTP/1.1 client codec.
    static func addHandlers(to channel: Channel, ending handler: UpstreamConnectionHandler) throws {
        try channel.pipeline.syncOperations.addHandler(handler)
    }

    private static func connectSocket(
        _ endpoint: UpstreamEndpoint, settings: UpstreamSettings, handler: UpstreamConnectionHandler, on eventLoop: EventLoop
    ) -> EventLoopFuture<Channel> {
        let boundHandler = NIOLoopBound(handler, eventLoop: eventLoop)
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(settings.connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try Self.addHandlers(to: channel, ending: boundHandler.value)
                }
            }
        if let address = endpoint.address {
            return bootstrap.connect(to: address)
        }
        return bootstrap.connect(host: endpoint.host, port: endpoint.port)
    }

    /// Opens a connection for a slot already reserved with `reserveSlot`.
    private func connect(_ endpoint: UpstreamEndpoint, settings: UpstreamSettings) -> EventLoopFuture<UpstreamConnection> {
        // Known to the other loops' pools from the first connection, so they can ask for its slot.
        self.join(endpoint, settings: settings)
        let handler = UpstreamConnectionHandler()
        return self.connector(endpoint, settings, handler).assumeIsolated().flatMapErrorThrowing { error in
            self.slotFreed(endpoint, settings: settings, .connectFailed)
            throw UpstreamAcquireError.connectFailed(error)
        }.map { channel in
            let connection = UpstreamConnection(channel: channel, handler: handler, endpoint: endpoint, timers: self.timers)
            self.openHere[ObjectIdentifier(endpoint), default: 0] += 1
            // On the close future, not on `channelInactive`: a channel closed before swift-nio
            // fired `channelActive` (a request whose client left while its connection was being
            // made, given back and closed inside the connect's callback) never fires
            // `channelInactive`, and its slot was lost for good; with two workers and an upstream
            // at `max_connections`, a few such slots made every later request wait out
            // `connect_timeout` and get 503. Strong references only (a `weak` one gives its object
            // a side table, and every retain of it the slow path): the pool lives as long as its
            // loop, and the connection until its channel closes (then the callback is dropped).
            channel.closeFuture.assumeIsolated().whenComplete { _ in
                self.removeIdle(handler, endpoint: endpoint)
                self.slotFreed(endpoint, settings: settings, connection.closedForAnotherLoop ? .closedForAnotherLoop : .closed)
            }
            return connection
        }.nonisolated()
    }
}

/// A pool as other event loops hold it: work is run on the pool's own loop. Strong: pools live as
/// long as their loops (`LoopResources`), and a weak reference would slow every retain of the pool.
private final class PoolReference: @unchecked Sendable {
    // Used only on `loop`.
    private let pool: UpstreamConnectionPool
    private let loop: EventLoop

    init(_ pool: UpstreamConnectionPool) {
        self.pool = pool
        self.loop = pool.eventLoop
    }

    func onLoop(_ work: @escaping @Sendable (UpstreamConnectionPool) -> Void) {
        self.loop.execute { work(self.pool) }
    }
}
