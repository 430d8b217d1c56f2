
import NIOCore
import NIOPosix
import TLSClient

/// What the worker needs from a connection, whatever the protocol. All calls on the worker's loop.
protocol BenchConnection: AnyObject {
    /// Requests this connection can take now (0 while connecting, draining or closed).
    var freeSlots: Int { get }
    var inFlight: Int { get }
    func send(_ request: RequestTag, nowNanos: UInt64)
    /// Requests sent before `cutoffNanos` and still unanswered become `timeout` errors.
    func expire(sentBefore cutoffNanos: UInt64)
    func close()
}

/// The requests a connection sends, built once per connection: the settings' requests with the
/// `Authorization` this connection uses for each (tokens may differ per connection).
struct RequestTemplate: Sendable {
    var target: BenchTarget
    var requests: [BenchRequest]
}

/// What a connection carries with an in-flight request and hands back with its outcome.
struct RequestTag: Sendable {
    /// When it was due: its latency runs from here (open loop), or from the send (closed loop).
    var scheduled: UInt64
    /// Index into the settings' requests.
    var target: Int
    /// Index into the scheduled stages; the warm-up when the run has one and this is 0.
    var stage: Int
}

/// What the main task reads from a worker once per second and at the end.
struct WorkerSnapshot: Sendable {
    var interval: BenchStats
    /// Warm-up responses since the last snapshot (only counted, never recorded).
    var warmupResponses: Int
    var sent: Int
    var inFlight: Int
    var waiting: Int
    var finished: Bool
}

struct WorkerResult: Sendable {
    var stats: BenchStats
    var targetStats: [BenchStats]
    var stageStats: [BenchStats]
    /// Recorded requests sent, by target.
    var targetSent: [Int]
    /// Recorded requests scheduled, by stage (the warm-up left out).
    var stageScheduled: [Int]
    var scheduled: Int
    var sent: Int
    var unsent: Int
    var finishedNanos: UInt64
    var readyConnections: Int
    var firstConnectError: String?
}

/// Drives this event loop's share of the connections: opens them, feeds them requests (open or
/// closed loop), records latencies into this loop's own histogram, reconnects closed connections
/// and enforces the request timeout. Only ever touched on `loop`; the main task talks to it with
/// `loop.submit`, so there are no locks on the hot path.
final class LoopWorker {
    enum Phase { case connecting, ready, running, draining, finished }

    let loop: EventLoop
    let settings: BenchSettings
    let connectionIndices: [Int]
    private let tlsContext: TLSClientContext?
    private var connections: [Int: any BenchConnection] = [:]
    private var phase = Phase.connecting
    private var pendingInitial: Int
    private var readyPromise: EventLoopPromise<Int>
    private var finishedPromise: EventLoopPromise<WorkerResult>

    private var stats = BenchStats()
    private var interval = BenchStats()
    private var targetStats: [BenchStats]
    private var stageStats: [BenchStats]
    private var targetSent: [Int]
    private var picker: WeightedPicker
    /// Stage 0 is the warm-up: sent, not recorded.
    private let hasWarmup: Bool
    private var warmupResponses = 0
    /// Closed loop: requests sent before this go to the warm-up.
    private var recordFrom: UInt64 = 0
    private var queue: OpenLoopQueue?
    private var sent = 0
    private var cursor = 0
    private var wakeup: (at: UInt64, task: Scheduled<Void>)?
    private var sweepTask: Scheduled<Void>?
    private var graceDeadline: UInt64 = 0
    private(set) var firstConnectError: String?
    private var everReady = 0

    init(loop: EventLoop, settings: BenchSettings, connectionIndices: [Int], tlsContext: TLSClientContext?) {
        self.loop = loop
        self.settings = settings
        self.connectionIndices = connectionIndices
        self.tlsContext = tlsContext
        self.pendingInitial = connectionIndices.count
        self.readyPromise = loop.makePromise()
        self.finishedPromise = loop.makePromise()
        self.hasWarmup = settings.warmupNanos > 0
        self.targetStats = settings.requests.map { _ in BenchStats() }
        self.stageStats = (0..<max(1, settings.stages.count)).map { _ in BenchStats() }
        self.targetSent = Array(repeating: 0, count: settings.requests.count)
        self.picker = WeightedPicker(weights: settings.requests.map(\.weight))
    }

    var now: UInt64 { NIODeadline.now().uptimeNanoseconds }

    // MARK: Connections

    /// Opens every connection; the future gives how many became ready (TLS and ALPN done).
    func connectAll() -> EventLoopFuture<Int> {
        if self.connectionIndices.isEmpty { self.readyPromise.succeed(0) }
        for index in self.connectionIndices { self.connect(index) }
        return self.readyPromise.futureResult
    }

    private func connect(_ index: Int) {
        let template = self.template(forConnection: index)
        let worker = NIOLoopBound(self, eventLoop: self.loop)
        let settings = self.settings
        let tls = self.tlsContext
        let bootstrap = ClientBootstrap(group: self.loop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(.nanoseconds(Int64(min(self.settings.timeoutNanos, 10_000_000_000))))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tls {
                        try sync.addHandler(TLSClientHandler(context: tls, host: settings.target.host, hostIsIPAddress: settings.target.hostIsIPAddress))
                    }
                    if settings.http2 {
                        try sync.addHandler(HTTP2BenchConnection(worker: worker.value, index: index, template: template, streams: settings.streams, tls: tls != nil))
                    } else {
                        try sync.addHandler(HTTP1BenchConnection(worker: worker.value, index: index, template: template, tls: tls != nil))
                    }
                }
            }
        bootstrap.connect(host: self.settings.target.host, port: self.settings.target.port).assumeIsolated().whenFailure { error in
            self.connectionFailed(index, error: error)
        }
    }

    private func template(forConnection index: Int) -> RequestTemplate {
        let now = Int(benchWallClockSeconds())
        var secret: String? = nil
        var runToken: String? = nil
        switch self.settings.authorization {
        case .none:
            break
        case .token(let token):
            runToken = token
        case .jwtSecret(let value, let perConnection):
            secret = value
            // The secret was checked by the runner before any loop started.
            runToken = try? BenchToken.mint(secret: value, connection: perConnection ? index : nil, now: now)
        }
        let requests = self.settings.requests.map { request in
            var request = request
            let token: String?
            switch request.token {
            case .runDefault: token = runToken
            case .none: token = nil
            case .minted(let claims): token = secret.flatMap { try? BenchToken.mint(secret: $0, claims: claims, connection: index, now: now) }
            }
            if let token { request.headers.append(BenchHeader("authorization", "Bearer \(token)")) }
            return request
        }
        return RequestTemplate(target: self.settings.target, requests: requests)
    }

    /// The connection finished its handshake (TLS, ALPN) and can take requests.
    func connectionReady(_ index: Int, _ connection: any BenchConnection) {
        self.connections[index] = connection
        self.everReady += 1
        if self.phase == .connecting {
            self.initialAttemptDone()
        } else {
            self.pump()
        }
    }

    /// A connection closed, or failed before becoming ready (`wasReady` false: a connect error).
    func connectionClosed(_ index: Int, wasReady: Bool, error: (any Error)?) {
        self.connections[index] = nil
        if !wasReady {
            self.connectionFailed(index, error: error)
            return
        }
        if self.phase == .running || self.phase == .ready {
            // Servers close keep-alive connections (Connection: close, idle, GOAWAY): open another.
            self.connect(index)
        }
        self.checkDrained()
    }

    private func connectionFailed(_ index: Int, error: (any Error)?) {
        if self.firstConnectError == nil { self.firstConnectError = error.map { "\($0)" } ?? "connection closed during handshake" }
        switch self.phase {
        case .connecting:
            self.initialAttemptDone()
        case .ready, .running:
            if self.phase == .running && self.now >= self.recordFrom { self.record(error: .connect, nil) }
            self.loop.assumeIsolated().scheduleTask(in: .milliseconds(100)) {
                if self.phase == .running || self.phase == .ready { self.connect(index) }
            }
        case .draining, .finished:
            self.checkDrained()
        }
    }

    private func initialAttemptDone() {
        self.pendingInitial -= 1
        if self.pendingInitial == 0 {
            self.phase = .ready
            self.readyPromise.succeed(self.connections.count)
        }
    }

    // MARK: Running

    /// Starts sending at `startNanos` (open loop: on `schedule`; closed loop: when `schedule` is nil).
    func start(startNanos: UInt64, endNanos: UInt64, schedule: StagedSchedule?) -> EventLoopFuture<WorkerResult> {
        if let schedule { self.queue = OpenLoopQueue(schedule: schedule) }
        self.recordFrom = startNanos + self.settings.warmupNanos
        let loop = self.loop.assumeIsolated()
        loop.scheduleTask(deadline: .uptimeNanoseconds(startNanos)) {
            self.phase = .running
            self.pump()
        }
        loop.scheduleTask(deadline: .uptimeNanoseconds(endNanos)) {
            self.endOfRun(endNanos: endNanos)
        }
        self.armSweep()
        return self.finishedPromise.futureResult
    }

    /// Sends what is due (open loop) or fills every free slot (closed loop).
    private func pump() {
        guard self.phase == .running else { return }
        let now = self.now
        if var queue = self.queue {
            queue.advance(to: now)
            while queue.waiting > 0, let connection = self.nextFree() {
                guard let (scheduled, stage) = queue.takeNextWithStage() else { break }
                self.send(on: connection, scheduled: scheduled, stage: stage, now: now)
            }
            self.queue = queue
            if let next = queue.nextWakeup { self.arm(at: next) }
        } else {
            let stage = self.hasWarmup && now >= self.recordFrom ? 1 : 0
            while let connection = self.nextFree() {
                self.send(on: connection, scheduled: now, stage: stage, now: now)
            }
        }
    }

    private func send(on connection: any BenchConnection, scheduled: UInt64, stage: Int, now: UInt64) {
        let target = self.picker.next()
        connection.send(RequestTag(scheduled: scheduled, target: target, stage: stage), nowNanos: now)
        if self.isRecorded(stage) {
            self.sent += 1
            self.targetSent[target] += 1
        }
    }

    private func isRecorded(_ stage: Int) -> Bool { !(self.hasWarmup && stage == 0) }

    /// Index into the recorded stages (the warm-up is not one of them).
    private func recordedStage(_ stage: Int) -> Int { self.hasWarmup ? stage - 1 : stage }

    /// The next connection with a free slot, round robin so load spreads over all of them.
    private func nextFree() -> (any BenchConnection)? {
        let count = self.connectionIndices.count
        for step in 0..<count {
            let index = self.connectionIndices[(self.cursor + step) % count]
            if let connection = self.connections[index], connection.freeSlots > 0 {
                self.cursor = (self.cursor + step + 1) % count
                return connection
            }
        }
        return nil
    }

    private func arm(at deadline: UInt64) {
        if let wakeup = self.wakeup {
            if wakeup.at <= deadline { return }
            wakeup.task.cancel()
        }
        let task = self.loop.assumeIsolated().scheduleTask(deadline: .uptimeNanoseconds(deadline)) {
            self.wakeup = nil
            self.pump()
        }
        self.wakeup = (deadline, task)
    }

    private func endOfRun(endNanos: UInt64) {
        guard self.phase == .running else { return }
        self.queue?.advance(to: endNanos &- 1)
        self.pump()
        self.phase = .draining
        self.wakeup?.task.cancel()
        self.wakeup = nil
        self.graceDeadline = self.now + min(self.settings.timeoutNanos, 5_000_000_000)
        self.checkDrained()
    }

    /// Checks timeouts every quarter of `--timeout` (10–250 ms), until the run is finished.
    private func armSweep() {
        let every = TimeAmount.milliseconds(Int64(max(10, min(250, self.settings.timeoutNanos / 4_000_000))))
        self.sweepTask = self.loop.assumeIsolated().scheduleTask(in: every) {
            self.sweep()
            if self.phase != .finished { self.armSweep() }
        }
    }

    private func sweep() {
        let now = self.now
        if self.phase == .draining && now >= self.graceDeadline {
            // Still unanswered after the grace period: timeouts.
            for connection in Array(self.connections.values) { connection.expire(sentBefore: .max) }
        } else if now > self.settings.timeoutNanos {
            for connection in Array(self.connections.values) { connection.expire(sentBefore: now - self.settings.timeoutNanos) }
        }
        self.checkDrained()
    }

    private func checkDrained() {
        guard self.phase == .draining else { return }
        guard self.connections.values.allSatisfy({ $0.inFlight == 0 }) else { return }
        self.phase = .finished
        self.sweepTask?.cancel()
        let finished = self.now
        for connection in Array(self.connections.values) { connection.close() }
        self.connections.removeAll()
        var stageScheduled = self.queue?.schedule.segments.map(\.count) ?? [self.sent]
        if self.hasWarmup && self.queue != nil { stageScheduled.removeFirst() }
        let warmupScheduled = self.hasWarmup ? (self.queue?.schedule.segments.first?.count ?? 0) : 0
        self.finishedPromise.succeed(WorkerResult(
            stats: self.stats, targetStats: self.targetStats, stageStats: self.stageStats, targetSent: self.targetSent,
            stageScheduled: stageScheduled,
            scheduled: self.queue.map { $0.total - warmupScheduled } ?? self.sent, sent: self.sent,
            unsent: self.queue?.waiting ?? 0, finishedNanos: finished, readyConnections: self.everReady,
            firstConnectError: self.firstConnectError
        ))
    }

    // MARK: Results (from connections)

    func completed(_ request: RequestTag, status: Int) {
        if self.isRecorded(request.stage) {
            let latency = openLoopLatencyMicros(scheduledNanos: request.scheduled, completedNanos: self.now)
            let expected = self.settings.requests[request.target].expect.contains(status)
            self.stats.recordResponse(status: status, latencyMicros: latency, expected: expected)
            self.interval.recordResponse(status: status, latencyMicros: latency, expected: expected)
            self.targetStats[request.target].recordResponse(status: status, latencyMicros: latency, expected: expected)
            self.stageStats[self.recordedStage(request.stage)].recordResponse(status: status, latencyMicros: latency, expected: expected)
        } else {
            self.warmupResponses += 1
        }
        self.pump()
        self.checkDrained()
    }

    /// A request without a response; `request` nil for a failed connect, which belongs to none.
    func failed(_ kind: BenchErrorKind, _ request: RequestTag?) {
        self.record(error: kind, request)
        self.pump()
        self.checkDrained()
    }

    private func record(error kind: BenchErrorKind, _ request: RequestTag?) {
        if let request, !self.isRecorded(request.stage) { return }
        self.stats.recordError(kind)
        self.interval.recordError(kind)
        if let request {
            self.targetStats[request.target].recordError(kind)
            self.stageStats[self.recordedStage(request.stage)].recordError(kind)
        }
    }

    /// The interval since the last snapshot (then reset) and the running totals.
    func snapshot() -> WorkerSnapshot {
        defer {
            self.interval.reset()
            self.warmupResponses = 0
        }
        return WorkerSnapshot(
            interval: self.interval, warmupResponses: self.warmupResponses, sent: self.sent,
            inFlight: self.connections.values.reduce(0) { $0 + $1.inFlight }, waiting: self.queue?.waiting ?? 0,
            finished: self.phase == .finished
        )
    }

    /// Gives up: used when the run is abandoned before it starts.
    func closeAll() {
        self.phase = .finished
        self.finishedPromise.fail(BenchError.usage("run abandoned before it started"))
        for connection in Array(self.connections.values) { connection.close() }
        self.connections.removeAll()
    }
}

@available(*, unavailable)
extension LoopWorker: Sendable {}
