import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import Gateway

/// A pool whose connections are in-memory channels with the production pipeline, so a test can
/// play the upstream: answer, refuse writes, or close.
private final class FakeUpstream {
    let loop = EmbeddedEventLoop()
    let endpoint = UpstreamEndpoint(host: "127.0.0.1", port: 3001)
    let settings = UpstreamSettings(connectTimeout: .seconds(1), responseTimeout: .seconds(5), maxConnections: 4, idleTimeout: .seconds(4))
    /// Every channel the pool opened, oldest first.
    private(set) var channels: [EmbeddedChannel] = []
    private(set) var pool: UpstreamConnectionPool!

    /// While set, new connections stay connecting (`heldOpens`) until the test fails them.
    var holdOpens = false
    private(set) var heldOpens: [EventLoopPromise<Channel>] = []

    init() {
        self.pool = UpstreamConnectionPool(eventLoop: self.loop) { [unowned self] _, _, handler in
            if self.holdOpens {
                let promise = self.loop.makePromise(of: Channel.self)
                self.heldOpens.append(promise)
                return promise.futureResult
            }
            let channel = EmbeddedChannel(loop: self.loop)
            do {
                try UpstreamConnectionPool.addHandlers(to: channel, ending: handler)
                try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3001)).wait()
            } catch {
                return self.loop.makeFailedFuture(error)
            }
            self.channels.append(channel)
            return self.loop.makeSucceededFuture(channel)
        }
    }

    var cluster: UpstreamCluster {
        UpstreamCluster(name: "booking", endpoints: [self.endpoint], settings: self.settings)
    }

    func acquire(fresh: Bool = false) throws -> UpstreamConnection {
        var result: Result<UpstreamConnection, Error>?
        self.pool.acquire(self.endpoint, settings: self.settings, fresh: fresh).assumeIsolated().whenComplete { result = $0 }
        return try #require(result).get()
    }

    /// A connection that already served a request and sits idle in the pool.
    func reusedConnection() throws -> UpstreamConnection {
        let connection = try self.acquire()
        self.pool.release(connection, reusable: true, timeouts: self.settings.timeouts)
        return connection
    }

    /// Everything the gateway wrote to `channel`, as text, once the loop's tick is over (a whole
    /// request is flushed at its end).
    func written(_ channel: EmbeddedChannel, endingTheTick: Bool = true) throws -> String {
        if endingTheTick { self.loop.run() }
        var text = ""
        while let data = try channel.readOutbound(as: IOData.self) {
            guard case .byteBuffer(let buffer) = data else { continue }
            text += String(buffer: buffer)
        }
        return text
    }

    func answer(_ channel: EmbeddedChannel, _ response: String) throws {
        try channel.writeInbound(ByteBuffer(string: response))
    }
}

/// Fails every write the way a socket that the peer reset does (EPIPE), then closes on flush.
private final class RefuseWrites: ChannelOutboundHandler {
    typealias OutboundIn = Any

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        promise?.fail(IOError(errnoCode: EPIPE, reason: "writev"))
    }

    func flush(context: ChannelHandlerContext) {
        context.close(promise: nil)
    }
}

/// Records what an exchange tells its client side.
private final class RecordingDownstream: DownstreamResponder {
    var heads: [HTTPResponseHead] = []
    var errors: [GatewayError] = []
    var ended = 0
    var finished = 0

    var isWritable: Bool { true }
    func sendContinue(for exchange: RequestExchange) {}
    func sendResponseHead(for exchange: RequestExchange, _ head: HTTPResponseHead, framing: HeaderRewriter.ResponseFraming) {
        self.heads.append(head)
    }
    func sendResponseBody(for exchange: RequestExchange, _ body: ByteBuffer) {}
    func flush(for exchange: RequestExchange) {}
    func sendResponseEnd(for exchange: RequestExchange) { self.ended += 1 }
    func sendErrorResponse(for exchange: RequestExchange, _ error: GatewayError) { self.errors.append(error) }
    func pauseRequestBody(for exchange: RequestExchange) {}
    func resumeRequestBody(for exchange: RequestExchange) {}
    func abortResponse(for exchange: RequestExchange) {}
    func exchangeFinished(for exchange: RequestExchange) { self.finished += 1 }
}

@Suite("Upstream connection pool and retries")
struct UpstreamConnectionPoolTests {
    /// Two loops' pools of one endpoint whose `max_connections` is 1 (unless told), each opening in-memory channels.
    private struct TwoLoops {
        let endpoint = UpstreamEndpoint(host: "127.0.0.1", port: 3001)
        let settings: UpstreamSettings
        let loopA = EmbeddedEventLoop()
        let loopB = EmbeddedEventLoop()
        let a: UpstreamConnectionPool
        let b: UpstreamConnectionPool
        /// Connects refused from now on (both loops), for as many as this says.
        let refusals = Box<Int>()

        init(maxConnections: Int = 1) {
            let refusals = self.refusals
            self.settings = UpstreamSettings(
                connectTimeout: .seconds(1), responseTimeout: .seconds(5), maxConnections: maxConnections, idleTimeout: .seconds(60)
            )
            func pool(on loop: EmbeddedEventLoop) -> UpstreamConnectionPool {
                UpstreamConnectionPool(eventLoop: loop) { _, _, handler in
                    if let left = refusals.value, left > 0 {
                        refusals.value = left - 1
                        return loop.makeFailedFuture(ChannelError.connectTimeout(.seconds(1)))
                    }
                    let channel = EmbeddedChannel(loop: loop)
                    do {
                        try UpstreamConnectionPool.addHandlers(to: channel, ending: handler)
                        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3001)).wait()
                    } catch {
                        return loop.makeFailedFuture(error)
                    }
                    return loop.makeSucceededFuture(channel)
                }
            }
            self.a = pool(on: self.loopA)
            self.b = pool(on: self.loopB)
        }

        func acquire(_ pool: UpstreamConnectionPool, into result: Box<Result<UpstreamConnection, any Error>>) {
            pool.acquire(self.endpoint, settings: self.settings).assumeIsolated().whenComplete { result.value = $0 }
        }
    }

    final class Box<Value> { var value: Value?; init() {} }

    @Test func anIdleConnectionOnAnotherLoopGivesUpItsSlotToAWaitingRequest() throws {
        let loops = TwoLoops()
        let first = Box<Result<UpstreamConnection, any Error>>()
        loops.acquire(loops.a, into: first)
        loops.a.release(try #require(first.value).get(), reusable: true, timeouts: loops.settings.timeouts)
        // Loop A keeps the only slot in an idle connection; a request on loop B waits ...
        let second = Box<Result<UpstreamConnection, any Error>>()
        loops.acquire(loops.b, into: second)
        #expect(second.value == nil)
        // ... until loop A closes its idle connection and loop B opens its own, long before
        // `connect_timeout`.
        loops.loopA.run()
        loops.loopB.run()
        let connection = try #require(second.value).get()
        #expect(connection.channel.eventLoop === loops.loopB)
        #expect(loops.endpoint.openConnections.load(ordering: .relaxed) == 1)
    }

    @Test func everyRequestWaitingOnOneLoopGetsASlotShedByTheOther() throws {
        let loops = TwoLoops(maxConnections: 3)
        let first = (0..<3).map { _ in Box<Result<UpstreamConnection, any Error>>() }
        for box in first { loops.acquire(loops.a, into: box) }
        for box in first { loops.a.release(try #require(box.value).get(), reusable: true, timeouts: loops.settings.timeouts) }
        // Loop A keeps all three slots idle; three requests on loop B wait ...
        let waiting = (0..<3).map { _ in Box<Result<UpstreamConnection, any Error>>() }
        for box in waiting { loops.acquire(loops.b, into: box) }
        #expect(waiting.allSatisfy { $0.value == nil })
        // ... and loop A closes all three for them, long before `connect_timeout`.
        loops.loopA.run()
        loops.loopB.run()
        for box in waiting { #expect(try #require(box.value).get().channel.eventLoop === loops.loopB) }
        #expect(loops.endpoint.openConnections.load(ordering: .relaxed) == 3)
    }

    @Test(arguments: [0, 1])
    func whenBothLoopsWaitTheyTakeTurnsAtReleasedConnections(failedConnectsFirst: Int) throws {
        let loops = TwoLoops(maxConnections: 2)
        // A connect that failed holds no connection: it must not count against loop A's share.
        loops.refusals.value = failedConnectsFirst
        for _ in 0..<failedConnectsFirst {
            let failed = Box<Result<UpstreamConnection, any Error>>()
            loops.acquire(loops.a, into: failed)
            #expect(throws: UpstreamAcquireError.self) { try #require(failed.value).get() }
        }
        let busy = (0..<2).map { _ in Box<Result<UpstreamConnection, any Error>>() }
        for box in busy { loops.acquire(loops.a, into: box) }
        // Both slots in use on loop A; two requests wait on each loop, loop A's first.
        let waitingA = (0..<2).map { _ in Box<Result<UpstreamConnection, any Error>>() }
        let waitingB = (0..<2).map { _ in Box<Result<UpstreamConnection, any Error>>() }
        for box in waitingA { loops.acquire(loops.a, into: box) }
        for box in waitingB { loops.acquire(loops.b, into: box) }
        loops.loopA.run()
        loops.loopB.run()
        #expect((waitingA + waitingB).allSatisfy { $0.value == nil })
        // Loop A releases both: one goes to its own oldest waiter, the other's slot to loop B.
        for box in busy { loops.a.release(try #require(box.value).get(), reusable: true, timeouts: loops.settings.timeouts) }
        loops.loopA.run()
        loops.loopB.run()
        #expect(waitingA.filter { $0.value != nil }.count == 1)
        #expect(waitingB.filter { $0.value != nil }.count == 1)
        #expect(try #require(waitingB[0].value).get().channel.eventLoop === loops.loopB)
        #expect(loops.endpoint.openConnections.load(ordering: .relaxed) == 2)
    }

    @Test func aNewRequestQueuesBehindRequestsWaitingOnAnotherLoop() throws {
        let loops = TwoLoops(maxConnections: 1)
        let first = Box<Result<UpstreamConnection, any Error>>()
        loops.acquire(loops.a, into: first)
        let waiting = Box<Result<UpstreamConnection, any Error>>()
        loops.acquire(loops.b, into: waiting)
        loops.loopA.run()
        loops.loopB.run()
        // Not reusable: closed, and its slot goes to loop B's waiter, not to a newcomer on loop A
        // that arrives before loop B runs.
        loops.a.release(try #require(first.value).get(), reusable: false, timeouts: loops.settings.timeouts)
        let newcomer = Box<Result<UpstreamConnection, any Error>>()
        loops.acquire(loops.a, into: newcomer)
        loops.loopA.run()
        loops.loopB.run()
        #expect(try #require(waiting.value).get().channel.eventLoop === loops.loopB)
        #expect(newcomer.value == nil)
    }

    @Test func aConnectionReleasedWhileAnotherLoopWaitsFreesItsSlotForIt() throws {
        let loops = TwoLoops()
        let first = Box<Result<UpstreamConnection, any Error>>()
        loops.acquire(loops.a, into: first)
        let busy = try #require(first.value).get()
        let second = Box<Result<UpstreamConnection, any Error>>()
        loops.acquire(loops.b, into: second)
        loops.loopA.run()  // nothing idle to shed: the request on loop B keeps waiting
        loops.loopB.run()
        #expect(second.value == nil)
        // Released reusable, but not kept idle on loop A: loop B's request takes the slot.
        loops.a.release(busy, reusable: true, timeouts: loops.settings.timeouts)
        loops.loopA.run()
        loops.loopB.run()
        #expect(!busy.channel.isActive)
        #expect(try #require(second.value).get().channel.eventLoop === loops.loopB)
        #expect(loops.endpoint.openConnections.load(ordering: .relaxed) == 1)
    }

    @Test func requestsWaitingForASlotAreServedOldestFirstAndFailAfterConnectTimeout() throws {
        let upstream = FakeUpstream()  // max_connections 4, connect_timeout 1 s
        let busy = try (0..<4).map { _ in try upstream.acquire() }
        var results: [Result<UpstreamConnection, any Error>?] = Array(repeating: nil, count: 3)
        for index in 0..<3 {
            if index == 2 { upstream.loop.advanceTime(by: .milliseconds(600)) }
            upstream.pool.acquire(upstream.endpoint, settings: upstream.settings).assumeIsolated().whenComplete { results[index] = $0 }
        }
        #expect(results.allSatisfy { $0 == nil })
        #expect(upstream.endpoint.stats.waiting.load(ordering: .relaxed) == 3)
        // A released connection goes to the oldest waiter, as it is, on no new socket.
        upstream.pool.release(busy[0], reusable: true, timeouts: upstream.settings.timeouts)
        #expect(try #require(results[0]).get() === busy[0])
        #expect(results[1] == nil && results[2] == nil)
        // The second waiter's second passes: it alone fails, the third (600 ms younger) waits on.
        upstream.loop.advanceTime(by: .milliseconds(399))
        #expect(results[1] == nil)
        upstream.loop.advanceTime(by: .milliseconds(1))
        #expect(throws: UpstreamAcquireError.self) { try #require(results[1]).get() }
        #expect(results[2] == nil)
        upstream.loop.advanceTime(by: .milliseconds(599))
        #expect(results[2] == nil)
        upstream.loop.advanceTime(by: .milliseconds(1))
        #expect(throws: UpstreamAcquireError.self) { try #require(results[2]).get() }
        #expect(upstream.endpoint.stats.waiting.load(ordering: .relaxed) == 0)
        #expect(upstream.channels.count == 4)
        // With nobody waiting, a released connection is kept idle again.
        upstream.pool.release(busy[1], reusable: true, timeouts: upstream.settings.timeouts)
        #expect(try upstream.acquire() === busy[1])
    }

    @Test func idleConnectionClosedByPeerIsEvictedAndNotHandedOut() throws {
        let upstream = FakeUpstream()
        let kept = try upstream.acquire()
        let closed = try upstream.acquire()
        // Released last, so it is the one `acquire` would pick first.
        upstream.pool.release(kept, reusable: true, timeouts: upstream.settings.timeouts)
        upstream.pool.release(closed, reusable: true, timeouts: upstream.settings.timeouts)
        #expect(upstream.endpoint.openConnections.load(ordering: .relaxed) == 2)

        // The upstream's keep-alive timeout closes the idle connection (EOF closes the channel).
        upstream.channels[1].close(promise: nil)
        upstream.loop.run()  // the slot is freed by the channel's close future
        #expect(upstream.endpoint.openConnections.load(ordering: .relaxed) == 1)

        let handedOut = try upstream.acquire()
        #expect(handedOut === kept)
        #expect(upstream.channels.count == 2)
    }

    @Test func idleConnectionThatTurnsReadableIsClosed() throws {
        let upstream = FakeUpstream()
        let connection = try upstream.reusedConnection()
        // Bytes nobody asked for: the connection is out of sync and must not carry a request.
        try? upstream.answer(upstream.channels[0], "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        #expect(!upstream.channels[0].isActive)
        upstream.loop.run()
        #expect(upstream.endpoint.openConnections.load(ordering: .relaxed) == 0)
        let next = try upstream.acquire()
        #expect(next !== connection)
        #expect(upstream.channels.count == 2)
    }

    @Test func releaseNotReusableClosesAndFreesTheSlot() throws {
        let upstream = FakeUpstream()
        let connection = try upstream.acquire()
        upstream.pool.release(connection, reusable: false, timeouts: upstream.settings.timeouts)
        #expect(!upstream.channels[0].isActive)
        upstream.loop.run()
        #expect(upstream.endpoint.openConnections.load(ordering: .relaxed) == 0)
        #expect(try upstream.acquire() !== connection)
        #expect(upstream.channels.count == 2)
    }

    @Test func idleTimeoutClosesTheConnection() throws {
        let upstream = FakeUpstream()
        _ = try upstream.reusedConnection()
        upstream.loop.advanceTime(by: .milliseconds(3999))
        #expect(upstream.channels[0].isActive)
        upstream.loop.advanceTime(by: .milliseconds(1))
        #expect(!upstream.channels[0].isActive)
        #expect(upstream.endpoint.openConnections.load(ordering: .relaxed) == 0)
    }

    @Test func freshAcquireSkipsIdleConnections() throws {
        let upstream = FakeUpstream()
        let idle = try upstream.reusedConnection()
        #expect(try upstream.acquire(fresh: true) !== idle)
        #expect(try upstream.acquire() === idle)
    }

    #if os(Linux)
    /// The upstream's FIN is in the kernel but the event loop has not read it: the same loop
    /// iteration that would read it picks the connection for a request. Real sockets, because
    /// the check reads the TCP state.
    @Test func aConnectionGivenBackInsideItsConnectCallbackFreesItsSlot() throws {
        // swift-nio completes a connect before it fires `channelActive`. A request whose client
        // left while its connection was being made gives the connection back inside that
        // callback, and a channel closed then never fires `channelInactive`: the slot must be
        // freed anyway (before: lost for good, and with `max_connections: 1` every later request
        // waited out `connect_timeout`).
        let upstreamGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let gatewayGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer {
            try? gatewayGroup.syncShutdownGracefully()
            try? upstreamGroup.syncShutdownGracefully()
        }
        let server = try ServerBootstrap(group: upstreamGroup).bind(host: "127.0.0.1", port: 0).wait()
        let endpoint = UpstreamEndpoint(host: "127.0.0.1", port: server.localAddress!.port!)
        let settings = UpstreamSettings(connectTimeout: .seconds(5), responseTimeout: .seconds(5), maxConnections: 1, idleTimeout: .seconds(30))
        let loop = gatewayGroup.next()
        let pool = try loop.submit { NIOLoopBound(UpstreamConnectionPool(eventLoop: loop), eventLoop: loop) }.wait()
        let first = try loop.flatSubmit {
            pool.value.acquire(endpoint, settings: settings).assumeIsolated().map { connection in
                let wasActive = connection.channel.isActive
                pool.value.release(connection, reusable: false, timeouts: settings.timeouts)
                return wasActive
            }.nonisolated()
        }.wait()
        #expect(first, "the connection was not usable in the connect's callback")
        // The slot comes back within a loop tick: the next request gets a connection of its own
        // (with the slot lost, it waited out `connect_timeout` and failed `poolExhausted`).
        let second = try loop.flatSubmit {
            pool.value.acquire(endpoint, settings: settings).map { $0.channel.isActive }
        }.wait()
        #expect(second)
        #expect(endpoint.openConnections.load(ordering: .relaxed) == 1)
        try server.close().wait()
    }

    @Test func idleConnectionWhoseCloseIsNotYetReadIsNotHandedOut() throws {
        final class Accepted: Sendable { let channels = Mutex<[Channel]>([]) }
        let accepted = Accepted()
        let upstreamGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let gatewayGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer {
            try? gatewayGroup.syncShutdownGracefully()
            try? upstreamGroup.syncShutdownGracefully()
        }
        let server = try ServerBootstrap(group: upstreamGroup)
            .childChannelInitializer { channel in
                accepted.channels.withLock { $0.append(channel) }
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        let endpoint = UpstreamEndpoint(host: "127.0.0.1", port: server.localAddress!.port!)
        let settings = UpstreamSettings(connectTimeout: .seconds(5), responseTimeout: .seconds(5), maxConnections: 4, idleTimeout: .seconds(30))
        let loop = gatewayGroup.next()
        let handedOutAgain = try loop.flatSubmit {
            let pool = UpstreamConnectionPool(eventLoop: loop)
            return pool.acquire(endpoint, settings: settings).assumeIsolated().flatMap { first in
                pool.release(first, reusable: true, timeouts: settings.timeouts)
                // Everything below runs in one task, so this loop cannot read the FIN meanwhile.
                let deadline = Date() + 5
                while accepted.channels.withLock({ $0.isEmpty }) && Date() < deadline { usleep(1000) }
                accepted.channels.withLock { $0.first }?.close(promise: nil)
                while first.isOpenBothWays && Date() < deadline { usleep(1000) }
                #expect(first.channel.isActive, "the loop read the FIN: the test did not set up the race")
                // Taken for a request that is resent anyway if it dies unanswered (an idempotent,
                // bodiless one: `getWrittenOnAReusedConnectionIsSentOnceMoreOnAFreshConnection`),
                // the connection skips the probe and is handed out; back it goes for the probe.
                let unprobed = pool.takeIdle(endpoint, probeTCPState: false)
                #expect(unprobed === first)
                if let unprobed { pool.release(unprobed, reusable: true, timeouts: settings.timeouts) }
                return pool.acquire(endpoint, settings: settings).map { $0 === first }
            }.nonisolated()
        }.wait()
        #expect(!handedOutAgain)
        try server.close().wait()
    }
    #endif

    // MARK: - Retries of a request whose connection died before any response byte

    private func exchange(
        _ method: HTTPMethod, body: String? = nil, upstream: FakeUpstream, downstream: RecordingDownstream
    ) -> RequestExchange {
        var headers = HTTPHeaders([("host", "api.barberpro.test")])
        if let body { headers.add(name: "content-length", value: String(body.utf8.count)) }
        let head = UpstreamRequestHead.rewritten(HTTPRequestHead(version: .http1_1, method: method, uri: "/api/bookings", headers: headers))
        let exchange = RequestExchange(
            context: RequestContext(requestID: "req-1", trace: nil, method: method, clientVersion: .http1_1, addHSTS: false, responseAdditions: .none),
            upstream: UpstreamLeg(head: head, cluster: upstream.cluster, pool: upstream.pool),
            expectsContinue: false, requestHasBody: body != nil, downstream: downstream
        )
        if let body {
            // The body came in the same packet as the head, before any connection was ready.
            exchange.requestBodyReceived(ByteBuffer(string: body))
            exchange.requestEndReceived()
        }
        return exchange
    }

    @Test func aRequestOnAnIdleConnectionLeavesAtTheEndOfTheTickOneThatWaitedAtOnce() throws {
        let upstream = FakeUpstream()
        _ = try upstream.reusedConnection()
        let onIdle = RecordingDownstream()
        self.exchange(.GET, upstream: upstream, downstream: onIdle).start()
        #expect(try upstream.written(upstream.channels[0], endingTheTick: false).isEmpty)
        #expect(try upstream.written(upstream.channels[0]).hasPrefix("GET /api/bookings HTTP/1.1\r\n"))

        // No idle connection left: this one waits for a new connection, then goes at once.
        let waited = RecordingDownstream()
        self.exchange(.GET, upstream: upstream, downstream: waited).start()
        #expect(upstream.channels.count == 2)
        #expect(try upstream.written(upstream.channels[1], endingTheTick: false).hasPrefix("GET /api/bookings HTTP/1.1\r\n"))
    }

    @Test func postWrittenOnAReusedConnectionIsNotSentAgain() throws {
        let upstream = FakeUpstream()
        _ = try upstream.reusedConnection()
        let downstream = RecordingDownstream()
        let exchange = self.exchange(.POST, upstream: upstream, downstream: downstream)
        exchange.start()
        #expect(try upstream.written(upstream.channels[0]).hasPrefix("POST /api/bookings HTTP/1.1\r\n"))

        // The upstream may have booked it before the connection died.
        upstream.channels[0].close(promise: nil)
        #expect(downstream.errors == [.upstreamUnavailable])
        #expect(downstream.finished == 0)  // a gateway-made error ends the exchange by itself
        #expect(upstream.channels.count == 1)
    }

    @Test func getWrittenOnAReusedConnectionIsSentOnceMoreOnAFreshConnection() throws {
        let upstream = FakeUpstream()
        let first = try upstream.acquire()
        let other = try upstream.acquire()
        upstream.pool.release(other, reusable: true, timeouts: upstream.settings.timeouts)
        upstream.pool.release(first, reusable: true, timeouts: upstream.settings.timeouts)
        let downstream = RecordingDownstream()
        let exchange = self.exchange(.GET, upstream: upstream, downstream: downstream)
        exchange.start()
        #expect(try upstream.written(upstream.channels[0]).hasPrefix("GET /api/bookings HTTP/1.1\r\n"))

        upstream.channels[0].close(promise: nil)
        // Not the other idle connection: a new one.
        #expect(upstream.channels.count == 3)
        #expect(try upstream.written(upstream.channels[2]).hasPrefix("GET /api/bookings HTTP/1.1\r\n"))
        try upstream.answer(upstream.channels[2], "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        #expect(downstream.heads.map(\.status) == [.ok])
        #expect(downstream.errors.isEmpty)
        #expect(downstream.ended == 1)
    }

    @Test func getIsSentAgainOnlyOnce() throws {
        let upstream = FakeUpstream()
        _ = try upstream.reusedConnection()
        let downstream = RecordingDownstream()
        let exchange = self.exchange(.GET, upstream: upstream, downstream: downstream)
        exchange.start()
        upstream.channels[0].close(promise: nil)
        #expect(upstream.channels.count == 2)
        upstream.channels[1].close(promise: nil)
        #expect(upstream.channels.count == 2)
        #expect(downstream.errors == [.upstreamUnavailable])
    }

    /// A request counts against its endpoint (`least_outstanding`) from the moment it is written
    /// until it ends, however it ends: here the client leaves while the request, sent again after
    /// its reused connection died, waits for a fresh connection. (Before the exchange's single
    /// `finish`, that ending kept the count, and the endpoint looked one request busier for good.)
    @Test func aClientLeavingWhileTheResendConnectsReleasesTheEndpointsCount() throws {
        let upstream = FakeUpstream()
        _ = try upstream.reusedConnection()
        let downstream = RecordingDownstream()
        let exchange = self.exchange(.GET, upstream: upstream, downstream: downstream)
        exchange.start()
        #expect(try upstream.written(upstream.channels[0]).hasPrefix("GET /api/bookings HTTP/1.1\r\n"))
        #expect(upstream.endpoint.outstanding.load(ordering: .relaxed) == 1)

        upstream.holdOpens = true
        upstream.channels[0].close(promise: nil)
        #expect(upstream.heldOpens.count == 1)  // the resend waits for its connection
        exchange.cancel()
        #expect(upstream.endpoint.outstanding.load(ordering: .relaxed) == 0)
        #expect(downstream.errors.isEmpty && downstream.finished == 0)  // nobody left to answer
        for promise in upstream.heldOpens { promise.fail(ChannelError.ioOnClosedChannel) }
    }

    @Test func postRefusedBeforeAnyByteWasSentGoesOnceToAFreshConnection() throws {
        let upstream = FakeUpstream()
        _ = try upstream.reusedConnection()
        try upstream.channels[0].pipeline.syncOperations.addHandler(RefuseWrites(), position: .first)
        let downstream = RecordingDownstream()
        let exchange = self.exchange(.POST, body: #"{"barber":"b_1"}"#, upstream: upstream, downstream: downstream)
        exchange.start()

        #expect(try upstream.written(upstream.channels[0]).isEmpty)
        #expect(upstream.channels.count == 2)
        let resent = try upstream.written(upstream.channels[1])
        #expect(resent.hasPrefix("POST /api/bookings HTTP/1.1\r\n"))
        #expect(resent.hasSuffix("\r\n\r\n{\"barber\":\"b_1\"}"))
        try upstream.answer(upstream.channels[1], "HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
        #expect(downstream.heads.map(\.status) == [.created])
        #expect(downstream.errors.isEmpty)
    }
}

/// Records the response parts a pooled connection hands its owner.
private final class RecordingOwner: UpstreamConnectionOwner {
    var parts: [HTTPClientResponsePart] = []
    func upstreamReceivedHead(_ head: UpstreamResponseHead, keepAlive: Bool) { self.parts.append(.head(head.built)) }
    func upstreamReceivedBody(_ body: ByteBuffer) { self.parts.append(.body(body)) }
    func upstreamReceivedEnd() { self.parts.append(.end(nil)) }
    func upstreamFailed(_ error: Error) {}
    func upstreamClosed() {}
    func upstreamReadComplete() {}
    func upstreamWritabilityChanged(isWritable: Bool) {}
    func upstreamResponseTimedOut() {}
}

@Suite("Forwarded request heads on a pooled connection")
struct ForwardedHeadOnConnectionTests {
    /// The forwarded head is written as bytes, and the response parser learns its method from
    /// the write: a response to HEAD with `Content-Length` has no body, and the next response on
    /// the connection is read as a response, not as that body.
    @Test func theResponseDecoderLearnsTheMethodOfAForwardedHead() throws {
        let upstream = FakeUpstream()
        let connection = try upstream.acquire()
        let owner = RecordingOwner()
        connection.handler.owner = owner
        let info = ForwardingInfo(peer: "203.0.113.5", requestID: "req-1", scheme: "https", host: "api.barberpro.com.ar", fallbackHost: "x")
        let forwarded = ForwardedRequestHead(
            client: RequestHead(HTTPRequestHead(version: .http1_1, method: .HEAD, uri: "/api/slots", headers: ["host": "api.barberpro.com.ar"])),
            framing: .none, info: info, removing: []
        )
        connection.writeHead(.forwarded(forwarded), flush: true)
        let channel = try #require(upstream.channels.first)
        let written = try upstream.written(channel)
        var direct = ByteBuffer()
        forwarded.write(to: &direct)
        #expect(written == String(buffer: direct))
        #expect(written.hasPrefix("HEAD /api/slots HTTP/1.1\r\nhost: api.barberpro.com.ar\r\nx-forwarded-for: 203.0.113.5\r\n"))
        try upstream.answer(channel, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        let kinds = owner.parts.map { part -> String in
            switch part {
            case .head: return "head"
            case .body: return "body"
            case .end: return "end"
            }
        }
        #expect(kinds == ["head", "end"], "a response to HEAD ends after its head")
    }
}
