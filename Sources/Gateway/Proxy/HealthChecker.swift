import NIOCore
import NIOPosix
import Synchronization

/// Active health checks (`upstreams.X.health_check`): every `interval`, a `GET path` on a fresh
/// connection to each endpoint; `unhealthy_threshold` consecutive failures (connect error,
/// timeout, non-2xx) take the endpoint out of rotation, `healthy_threshold` passes bring it back.
/// One checker per config snapshot; a reload stops the old one.
final class HealthChecker: Sendable {
    private struct Counters {
        var passes = 0
        var failures = 0
    }
    private let clusters: [UpstreamCluster]
    private let eventLoop: EventLoop
    private let tasks = Mutex<[RepeatedTask]>([])
    private let counters = Mutex<[ObjectIdentifier: Counters]>([:])

    init(clusters: [UpstreamCluster], eventLoop: EventLoop) {
        self.clusters = clusters.filter { $0.settings.healthCheck != nil }
        self.eventLoop = eventLoop
    }

    func start() {
        for cluster in self.clusters {
            guard let check = cluster.settings.healthCheck else { continue }
            let interval = TimeAmount(check.interval)
            let task = self.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [self] _ in
                for endpoint in cluster.endpoints { self.probe(endpoint, check: check) }
            }
            self.tasks.withLock { $0.append(task) }
        }
    }

    func stop() {
        for task in self.tasks.withLock({ $0 }) { task.cancel() }
    }

    private func probe(_ endpoint: UpstreamEndpoint, check: HealthCheckConfig) {
        let handler = StatusLineHandler(status: self.eventLoop.makePromise(of: Int.self))
        let timeout = TimeAmount(check.timeout)
        let bootstrap = ClientBootstrap(group: self.eventLoop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
        let connect = endpoint.address.map { bootstrap.connect(to: $0) } ?? bootstrap.connect(host: endpoint.host, port: endpoint.port)
        let request = "GET \(check.path) HTTP/1.1\r\nHost: \(endpoint.key)\r\nUser-Agent: barberpro-gateway-health\r\nConnection: close\r\n\r\n"
        connect.whenComplete { result in
            switch result {
            case .success(let channel):
                var buffer = channel.allocator.buffer(capacity: request.utf8.count)
                buffer.writeString(request)
                channel.writeAndFlush(buffer, promise: nil)
                let timer = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
                handler.status.futureResult.whenComplete { _ in
                    timer.cancel()
                    channel.close(promise: nil)
                }
            case .failure:
                // The handler never saw a channel: its promise is ours to complete.
                handler.finish(0)
            }
        }
        handler.status.futureResult.whenComplete { outcome in
            let passed: Bool
            if case .success(let code) = outcome { passed = (200..<300).contains(code) } else { passed = false }
            self.record(endpoint, passed: passed, check: check)
        }
    }

    private func record(_ endpoint: UpstreamEndpoint, passed: Bool, check: HealthCheckConfig) {
        let id = ObjectIdentifier(endpoint)
        let verdict: Bool? = self.counters.withLock { all in
            var counters = all[id] ?? Counters()
            if passed {
                counters.passes += 1
                counters.failures = 0
            } else {
                counters.failures += 1
                counters.passes = 0
            }
            all[id] = counters
            if passed && counters.passes >= check.healthyThreshold { return true }
            if !passed && counters.failures >= check.unhealthyThreshold { return false }
            return nil
        }
        if let verdict {
            endpoint.activeHealthy.store(verdict, ordering: .relaxed)
            if verdict { endpoint.recordSuccess() }
        }
    }
}

/// Reads the status code from the first line of an HTTP/1.x response (0 when there is none).
private final class StatusLineHandler: ChannelInboundHandler, @unchecked Sendable {
    // Only touched on its channel's event loop.
    typealias InboundIn = ByteBuffer
    let status: EventLoopPromise<Int>
    private var collected = ByteBuffer()
    private var done = false

    init(status: EventLoopPromise<Int>) { self.status = status }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        self.collected.writeBuffer(&bytes)
        let view = self.collected.readableBytesView
        guard let end = view.firstIndex(of: UInt8(ascii: "\n")) else {
            if view.count > 1024 { self.finish(0) }
            return
        }
        let parts = String(decoding: view[view.startIndex..<end], as: UTF8.self).split(separator: " ")
        self.finish(parts.count >= 2 && parts[0].hasPrefix("HTTP/1.") ? Int(parts[1]) ?? 0 : 0)
    }

    func channelInactive(context: ChannelHandlerContext) { self.finish(0) }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.finish(0)
        context.close(promise: nil)
    }

    func finish(_ code: Int) {
        guard !self.done else { return }
        self.done = true
        self.status.succeed(code)
    }
}
