import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// One listener to bind, resolved from config.
struct ListenerPlan: Sendable {
    var info: ListenerInfo
    var host: String
    var port: Int
    var tls: TLSServerContext?
    var handshakeTimeout: TimeAmount
    /// Plaintext listener that also accepts HTTP/2 with prior knowledge (`protocols: [h2c, ...]`).
    var acceptsH2C = false
    var http2 = HTTP2Settings()
}

/// Open client connections, so a drain can ask each to finish and then wait for them.
final class ConnectionRegistry: Sendable {
    private let channels = Mutex<[ObjectIdentifier: Channel]>([:])

    func add(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        self.channels.withLock { $0[id] = channel }
        channel.closeFuture.whenComplete { _ in
            _ = self.channels.withLock { $0.removeValue(forKey: id) }
        }
    }

    var count: Int { self.channels.withLock { $0.count } }
    var all: [Channel] { self.channels.withLock { Array($0.values) } }
}

/// A bound listener. New connections read its current plan, so a reload can change the TLS
/// certificates or the role of a listener without rebinding it.
final class ListenerSlot: Sendable {
    let channel: Channel
    let plan: Mutex<ListenerPlan>

    init(channel: Channel, plan: ListenerPlan) {
        self.channel = channel
        self.plan = Mutex(plan)
    }

    var address: String { self.channel.localAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?" }
}

/// A validated config ready to be swapped in (`GatewayServer.prepareReload`).
struct PreparedReload: Sendable {
    var config: GatewayConfig
    var runtime: GatewayRuntime
    var plans: [ListenerPlan]
}

/// Reload and config inspection, for the admin listener.
protocol AdminControl: Sendable {
    /// Reads and validates the config file; when valid, swaps it in. Returns the errors otherwise.
    func reloadFromFile() -> Result<String, ConfigErrors>
    /// The running config as JSON, secrets redacted, with its hash.
    func runningConfigJSON() -> String
}

/// Binds the listeners and runs connections until drained. Lifecycle: `start` binds every listener
/// (any failure stops them all and throws), `reload` swaps a new validated config in (new
/// requests and connections use it, in-flight ones finish on theirs), `drain` stops accepting,
/// lets in-flight requests finish for up to `timeouts.drain`, then closes what is left.
public final class GatewayServer: Sendable, AdminControl {
    let holder: RuntimeHolder
    let status: ServerStatus
    let group: MultiThreadedEventLoopGroup
    let loops: LoopResourceRegistry
    let connections = ConnectionRegistry()
    let observability: Observability
    let configPath: String?
    private let initialPlans: [ListenerPlan]
    private let slots = Mutex<[(String, ListenerSlot)]>([])
    private let runningConfig: Mutex<GatewayConfig>
    private let healthChecker = Mutex<HealthChecker?>(nil)
    /// The running snapshot's JWKS refreshers (`jwks_url`, `discovery_url`), if any.
    private let jwksRefresher = Mutex<JWKSRefreshers?>(nil)
    private let reloads = ReloadSequencer()

    var runtime: GatewayRuntime { self.holder.current }

    init(
        config: GatewayConfig, runtime: GatewayRuntime, plans: [ListenerPlan], group: MultiThreadedEventLoopGroup,
        observability: Observability, configPath: String? = nil
    ) {
        self.holder = RuntimeHolder(runtime)
        self.status = runtime.status
        self.observability = observability
        self.initialPlans = plans
        self.group = group
        self.configPath = configPath
        self.runningConfig = Mutex(config)
        var loops: [EventLoop] = []
        for loop in group.makeIterator() { loops.append(loop) }
        self.loops = LoopResourceRegistry(loops: loops)
    }

    /// Listener name → bound address (ports resolved when the config asked for port 0).
    public var boundAddresses: [(name: String, address: String)] {
        self.slots.withLock { list in list.map { (name: $0.0, address: $0.1.address) } }
    }

    public func start() async throws {
        do {
            for plan in self.initialPlans {
                let slot = try await self.bind(plan)
                self.slots.withLock { $0.append((plan.info.name, slot)) }
            }
        } catch {
            for (_, slot) in self.slots.withLock({ $0 }) { try? await slot.channel.close() }
            throw error
        }
        self.noteHTTPSPort()
        self.noteCertificateExpiry(self.initialPlans)
        self.status.listenersBound.store(true, ordering: .relaxed)
        self.startHealthChecks(for: self.runtime)
        self.startJWKSRefresher(for: self.runtime)
    }

    /// Starts `runtime`'s JWKS refresher and stops the previous snapshot's. Call before the
    /// snapshot is swapped in: with the same URL, the new one starts from the old one's keys.
    private func startJWKSRefresher(for runtime: GatewayRuntime) {
        let refresher = runtime.authenticator?.jwks
        let previous = self.jwksRefresher.withLock { current -> JWKSRefreshers? in
            defer { current = refresher }
            return current
        }
        if let refresher, let previous { refresher.adoptKeys(from: previous) }
        if previous !== refresher { previous?.stop() }
        refresher?.start(on: self.group.next())
    }

    private func startHealthChecks(for runtime: GatewayRuntime) {
        let checker = HealthChecker(clusters: Array(runtime.clusters.values), eventLoop: self.group.next())
        let previous = self.healthChecker.withLock { current -> HealthChecker? in
            defer { current = checker }
            return current
        }
        previous?.stop()
        checker.start()
    }

    /// `gateway_tls_certificate_expiry_seconds{listener,name}`; `name` is the certificate's first
    /// DNS name (its CN without a SAN), else its position.
    private func noteCertificateExpiry(_ plans: [ListenerPlan]) {
        var series: [[String]: Double] = [:]
        for plan in plans {
            guard let tls = plan.tls else { continue }
            for (index, notAfter) in tls.notAfter.enumerated() {
                series[[plan.info.name, tls.serverNames[index].first ?? "certificate\(index)"]] = notAfter
            }
        }
        // Certificates a reload dropped leave the family with it.
        self.observability.metrics.tlsCertificateExpiry.replaceAll(series)
    }

    private func noteHTTPSPort() {
        let port = self.slots.withLock { slots in
            slots.first { $0.1.plan.withLock { $0.tls != nil } }?.1.channel.localAddress?.port
        }
        self.status.httpsPort.store(port ?? 0, ordering: .relaxed)
    }

    private func bind(_ plan: ListenerPlan) async throws -> ListenerSlot {
        let holder = self.holder
        let loops = self.loops
        let connections = self.connections
        let observability = self.observability
        let admin: AdminControl? = plan.info.role == .admin ? self : nil
        let slotBox = Mutex<ListenerSlot?>(nil)
        let bootstrap = ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                connections.add(channel)
                let plan = slotBox.withLock { $0?.plan.withLock { $0 } } ?? plan
                return channel.eventLoop.makeCompletedFuture {
                    // Set here, synchronously: as `childChannelOption`s each was applied through a
                    // promise, a future and closures, ~2 µs of every new connection.
                    if let options = channel.syncOptions {
                        try options.setOption(.tcpOption(.tcp_nodelay), value: 1)
                        try options.setOption(.maxMessagesPerRead, value: 4)
                    }
                    let loop = loops.resources(for: channel.eventLoop)
                    let services = ConnectionServices(
                        holder: holder, listener: plan.info, loop: loop, observability: observability, admin: admin
                    )
                    if let tls = plan.tls {
                        let http2 = plan.http2
                        try channel.pipeline.syncOperations.addHandler(
                            TLSServerHandler(context: tls, handshakeTimeout: plan.handshakeTimeout, timers: loop.timers) {
                                try NegotiatedProtocol.install($0, services: services, http2: http2, on: $1)
                            }
                        )
                    } else if plan.acceptsH2C {
                        try channel.pipeline.syncOperations.addHandler(
                            PriorKnowledgeSniffer(services: services, http2: plan.http2)
                        )
                    } else {
                        try HTTP1Pipeline.configure(channel.pipeline.syncOperations, services: services)
                    }
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.bind(host: plan.host, port: plan.port).get()
        } catch {
            throw GatewayStartupError("listeners.\(plan.info.name): cannot bind \(plan.host):\(plan.port): \(error)")
        }
        let slot = ListenerSlot(channel: channel, plan: plan)
        slotBox.withLock { $0 = slot }
        return slot
    }

    // MARK: - Reload

    /// Validates a config whole and builds everything it needs (TLS contexts included) without
    /// touching the running one.
    func prepareReload(text: String, baseDirectory: String) -> Result<PreparedReload, ConfigErrors> {
        do {
            let config = try ConfigLoader.parse(
                yaml: text, environment: ProcessInfo.processInfo.environment, baseDirectory: baseDirectory
            )
            try GatewayBuilder.validateForStartup(config)
            let plans: [ListenerPlan]
            do {
                plans = try GatewayBuilder.listenerPlans(config)
            } catch {
                throw ConfigErrors(errors: [ConfigError(path: "listeners", reason: "\(error)")])
            }
            let runtime = try GatewayBuilder.runtime(
                config, configHash: GatewayBuilder.stableHash(text), status: self.status, group: self.group,
                metrics: self.observability.metrics
            )
            return .success(PreparedReload(config: config, runtime: runtime, plans: plans))
        } catch let errors as ConfigErrors {
            return .failure(errors)
        } catch {
            return .failure(ConfigErrors(errors: [ConfigError(path: "config", reason: "\(error)")]))
        }
    }

    /// Swaps a prepared config in: listeners whose address is unchanged keep their socket and
    /// take the new plan (certificates, role); new addresses are bound first (a bind failure
    /// leaves the running config untouched); listeners no longer configured stop accepting.
    func applyReload(_ prepared: PreparedReload) async -> Result<Void, ConfigErrors> {
        let current = self.slots.withLock { $0 }
        var kept: [(String, ListenerSlot, ListenerPlan)] = []
        var added: [(String, ListenerSlot)] = []
        for plan in prepared.plans {
            if let (_, slot) = current.first(where: { $0.0 == plan.info.name && self.sameAddress($0.1, plan) }) {
                kept.append((plan.info.name, slot, plan))
                continue
            }
            do {
                added.append((plan.info.name, try await self.bind(plan)))
            } catch {
                for (_, slot) in added { try? await slot.channel.close() }
                return .failure(ConfigErrors(errors: [ConfigError(path: "listeners.\(plan.info.name)", reason: "\(error)")]))
            }
        }
        self.startJWKSRefresher(for: prepared.runtime)
        self.holder.replace(with: prepared.runtime)
        self.startHealthChecks(for: prepared.runtime)
        self.runningConfig.withLock { $0 = prepared.config }
        OperatorLog.configure(level: prepared.config.log.level, format: prepared.config.log.format)
        for (_, slot, plan) in kept { slot.plan.withLock { $0 = plan } }
        let keptSlots = Set(kept.map { ObjectIdentifier($0.1) })
        let removed = current.filter { !keptSlots.contains(ObjectIdentifier($0.1)) }
        self.slots.withLock { $0 = kept.map { ($0.0, $0.1) } + added }
        for (_, slot) in removed { try? await slot.channel.close() }
        self.noteHTTPSPort()
        self.noteCertificateExpiry(prepared.plans)
        return .success(())
    }

    private func sameAddress(_ slot: ListenerSlot, _ plan: ListenerPlan) -> Bool {
        let old = slot.plan.withLock { $0 }
        return old.host == plan.host && old.port == plan.port
    }

    /// SIGHUP, a change of the file, or `POST /config/reload`: all end here, one at a time
    /// (`ReloadSequencer`). Reads and validates the file now, under the sequencer's lock (so the
    /// reload validated last read the file last), and returns its hash or its errors; the swap
    /// follows on the reload worker, after every reload validated before it. Every error is
    /// logged; the running config stays when anything is wrong.
    func reloadFromFile() -> Result<String, ConfigErrors> {
        let result = self.reloads.submit(
            prepare: { () -> Result<PreparedReload, ConfigErrors> in
                guard let path = self.configPath, let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                    return .failure(ConfigErrors(errors: [ConfigError(path: "config", reason: "cannot read the config file")]))
                }
                let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
                return self.prepareReload(text: text, baseDirectory: directory)
            },
            apply: { [self] prepared in
                switch await self.applyReload(prepared) {
                case .success:
                    self.observability.metrics.configReloads.increment(["success"])
                    GatewayLog.info("config reloaded (hash \(prepared.runtime.configHash))")
                case .failure(let errors):
                    self.reloadFailed(errors)
                }
            }
        )
        switch result {
        case .success(let prepared): return .success(prepared.runtime.configHash)
        case .failure(let errors):
            self.reloadFailed(errors)
            return .failure(errors)
        }
    }

    private func reloadFailed(_ errors: ConfigErrors) {
        self.observability.metrics.configReloads.increment(["invalid"])
        GatewayLog.error("config reload refused, running config kept:")
        for error in errors.errors { GatewayLog.error("  \(error)") }
    }

    /// Reads the config file again and reloads it (SIGHUP, file watcher); false when refused.
    @discardableResult
    public func reloadConfigFile() -> Bool {
        if case .success = self.reloadFromFile() { return true }
        return false
    }

    // MARK: - AdminControl

    func runningConfigJSON() -> String {
        let config = self.runningConfig.withLock { $0 }
        return "{\"hash\":\"\(self.runtime.configHash)\",\"config\":" + ConfigDump.json(config) + "}"
    }

    // MARK: - Drain

    /// `timeouts.drain_delay`: readiness answers 503 while the listeners still accept, so a load
    /// balancer polling it stops sending before connections are refused. Skipped when nothing
    /// ever asked for readiness (no balancer is watching) or when the delay is zero.
    private func announceDrain() async {
        let operations = self.status.operations
        operations.draining.store(true, ordering: .relaxed)
        let delay = self.runtime.traffic.drainDelay
        guard delay > .zero, operations.readinessProbed.load(ordering: .relaxed) else { return }
        GatewayLog.info("readiness answers 503; listeners keep accepting for \(Duration.nanoseconds(delay.nanoseconds)) (timeouts.drain_delay)")
        try? await Task.sleep(for: .nanoseconds(delay.nanoseconds))
    }

    /// SIGTERM: stop accepting, let in-flight requests finish (HTTP/1 connections close after their
    /// current response), and close what is still open after `timeout`.
    public func drain(timeout: TimeAmount? = nil) async {
        let timeout = timeout ?? self.runtime.traffic.drainTimeout
        await self.announceDrain()
        self.status.listenersBound.store(false, ordering: .relaxed)
        // A reload still being applied would bind listeners behind the drain's back.
        await self.reloads.settled()
        self.reloads.finish()
        self.healthChecker.withLock { $0 }?.stop()
        self.jwksRefresher.withLock { $0 }?.stop()
        for (_, slot) in self.slots.withLock({ $0 }) { try? await slot.channel.close() }
        for channel in self.connections.all {
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
        let deadline = NIODeadline.now() + timeout
        while self.connections.count > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        for channel in self.connections.all { try? await channel.close() }
        for resources in self.loops.all {
            try? await resources.eventLoop.submit { resources.pool.closeAll() }.get()
        }
        self.observability.accessLog?.stop()
        await self.observability.spanExporter?.shutdown()
    }
}

/// Operator messages (through `OperatorLog`, on stderr: the access log owns stdout).
enum GatewayLog {
    static func info(_ message: String) { OperatorLog.logger.info("\(message)") }
    static func warning(_ message: String) { OperatorLog.logger.warning("\(message)") }
    static func error(_ message: String) { OperatorLog.logger.error("\(message)") }
}

/// A start-up failure with a message meant for the operator.
public struct GatewayStartupError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The HTTP/1.1 handlers of a client connection.
enum HTTP1Pipeline {
    static func configure(_ pipeline: ChannelPipeline.SynchronousOperations, services: ConnectionServices) throws {
        try pipeline.addHandler(HTTP1ServerHandler(services: services))
    }
}

/// The codec the TLS handshake chose through ALPN, installed by the TLS handler before the first
/// decrypted byte is passed on, so a request that arrived with the client's Finished reaches it.
enum NegotiatedProtocol {
    static func install(
        _ handshake: TLSHandshakeCompleted, services: ConnectionServices, http2: HTTP2Settings,
        on pipeline: ChannelPipeline.SynchronousOperations
    ) throws {
        let services = services.with(tlsVersion: handshake.version)
        if handshake.negotiatedProtocol == "h2" {
            try pipeline.addHandler(HTTP2ServerHandler(services: services, settings: http2))
        } else {
            try HTTP1Pipeline.configure(pipeline, services: services)
        }
    }
}

/// On a plaintext listener with `h2c`: the HTTP/2 connection preface (RFC 9113 §3.4) selects
/// HTTP/2 with prior knowledge, anything else HTTP/1.1. Waits for enough bytes to tell.
final class PriorKnowledgeSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    private let services: ConnectionServices
    private let http2: HTTP2Settings
    private var buffered: ByteBuffer?

    init(services: ConnectionServices, http2: HTTP2Settings) {
        self.services = services
        self.http2 = http2
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = self.unwrapInboundIn(data)
        if var buffered = self.buffered {
            buffered.writeBuffer(&incoming)
            self.buffered = buffered
        } else {
            self.buffered = incoming
        }
        let bytes = self.buffered!.readableBytesView
        let prefixLength = min(bytes.count, Self.preface.count)
        let matches = bytes.prefix(prefixLength).elementsEqual(Self.preface.prefix(prefixLength))
        if matches && bytes.count < Self.preface.count { return }
        do {
            if matches {
                try context.pipeline.syncOperations.addHandler(HTTP2ServerHandler(services: self.services, settings: self.http2))
            } else {
                try HTTP1Pipeline.configure(context.pipeline.syncOperations, services: self.services)
            }
        } catch {
            context.close(promise: nil)
            return
        }
        let pending = self.buffered!
        self.buffered = nil
        context.fireChannelRead(self.wrapInboundOut(pending))
        context.fireChannelReadComplete()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
