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

/// Binds the listeners and runs connections until drained. Lifecycle: `start` binds every listener
/// (any failure stops them all and throws), `drain` stops accepting, lets in-flight requests finish
/// for up to `timeouts.drain`, then closes what is left.
public final class GatewayServer: Sendable {
    let runtime: GatewayRuntime
    let plans: [ListenerPlan]
    let group: MultiThreadedEventLoopGroup
    let loops: LoopResourceRegistry
    let connections = ConnectionRegistry()
    let observability: Observability
    private let serverChannels = Mutex<[(String, Channel)]>([])

    init(runtime: GatewayRuntime, plans: [ListenerPlan], group: MultiThreadedEventLoopGroup, observability: Observability) {
        self.runtime = runtime
        self.observability = observability
        self.plans = plans
        self.group = group
        var loops: [EventLoop] = []
        for loop in group.makeIterator() { loops.append(loop) }
        self.loops = LoopResourceRegistry(loops: loops)
    }

    /// Listener name → bound address (ports resolved when the config asked for port 0).
    public var boundAddresses: [(name: String, address: String)] {
        self.serverChannels.withLock { list in
            list.map { (name: $0.0, address: $0.1.localAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?") }
        }
    }

    public func start() async throws {
        do {
            for plan in self.plans {
                let channel = try await self.bind(plan)
                if plan.tls != nil, self.runtime.httpsPort.load(ordering: .relaxed) == 0 {
                    self.runtime.httpsPort.store(channel.localAddress?.port ?? plan.port, ordering: .relaxed)
                }
                self.serverChannels.withLock { $0.append((plan.info.name, channel)) }
            }
        } catch {
            for (_, channel) in self.serverChannels.withLock({ $0 }) { try? await channel.close() }
            throw error
        }
        self.runtime.listenersBound.store(true, ordering: .relaxed)
    }

    private func bind(_ plan: ListenerPlan) async throws -> Channel {
        let runtime = self.runtime
        let loops = self.loops
        let connections = self.connections
        let observability = self.observability
        let bootstrap = ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelInitializer { channel in
                connections.add(channel)
                return channel.eventLoop.makeCompletedFuture {
                    let services = ConnectionServices(
                        runtime: runtime, listener: plan.info, loop: loops.resources(for: channel.eventLoop),
                        observability: observability
                    )
                    if let tls = plan.tls {
                        try channel.pipeline.syncOperations.addHandler(
                            TLSServerHandler(context: tls, handshakeTimeout: plan.handshakeTimeout)
                        )
                        try channel.pipeline.syncOperations.addHandler(
                            ProtocolSwitchHandler(services: services, http2: plan.http2)
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
        do {
            return try await bootstrap.bind(host: plan.host, port: plan.port).get()
        } catch {
            throw GatewayStartupError("listeners.\(plan.info.name): cannot bind \(plan.host):\(plan.port): \(error)")
        }
    }

    /// SIGTERM: stop accepting, let in-flight requests finish (HTTP/1 connections close after their
    /// current response), and close what is still open after `timeout`.
    public func drain(timeout: TimeAmount? = nil) async {
        let timeout = timeout ?? self.runtime.traffic.drainTimeout
        self.runtime.listenersBound.store(false, ordering: .relaxed)
        for (_, channel) in self.serverChannels.withLock({ $0 }) { try? await channel.close() }
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
    }
}

/// A start-up failure with a message meant for the operator.
public struct GatewayStartupError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The HTTP/1.1 handlers of a client connection.
enum HTTP1Pipeline {
    static func configure(_ pipeline: ChannelPipeline.SynchronousOperations, services: ConnectionServices) throws {
        var encoderConfiguration = HTTPResponseEncoder.Configuration()
        encoderConfiguration.automaticallySetFramingHeaders = false
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = services.runtime.traffic.maxHeaderBytes
        limits.maxHeaderFieldSize = services.runtime.traffic.maxHeaderBytes
        let activity = ReadActivityHandler()
        try pipeline.addHandler(activity)
        try pipeline.addHandler(HTTPResponseEncoder(configuration: encoderConfiguration))
        try pipeline.addHandler(
            ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop, limitConfiguration: limits))
        )
        try pipeline.addHandler(HTTP1ServerHandler(services: services, activity: activity))
    }
}

/// Installs the codec the TLS handshake chose through ALPN. It runs inside the TLS handler's
/// `TLSHandshakeCompleted` event, before the first decrypted byte is passed on, so a request that
/// arrived with the client's Finished reaches the new codec.
final class ProtocolSwitchHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    private let services: ConnectionServices
    private let http2: HTTP2Settings

    init(services: ConnectionServices, http2: HTTP2Settings) {
        self.services = services
        self.http2 = http2
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let handshake = event as? TLSHandshakeCompleted else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        var services = self.services
        services.tlsVersion = handshake.version
        do {
            if handshake.negotiatedProtocol == "h2" {
                try context.pipeline.syncOperations.addHandler(HTTP2ServerHandler(services: services, settings: self.http2))
            } else {
                try HTTP1Pipeline.configure(context.pipeline.syncOperations, services: services)
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            context.close(promise: nil)
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
        var incoming = Self.unwrapInboundIn(data)
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
        context.fireChannelRead(Self.wrapInboundOut(pending))
        context.fireChannelReadComplete()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
