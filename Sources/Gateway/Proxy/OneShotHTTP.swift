import NIOCore
import NIOHTTP1
import NIOPosix
import TLSClient

/// A server the gateway calls on its own behalf (a JWKS or discovery document, an OTLP
/// collector): what `OneShotHTTP` needs of its parsed URL.
protocol OneShotTarget: Sendable {
    var secure: Bool { get }
    var host: String { get }
    var port: Int { get }
    /// Origin-form request target (path and query).
    var target: String { get }
}

extension OneShotTarget {
    /// True for an IPv4 or IPv6 literal: no SNI, verified against the certificate's IP SANs.
    var hostIsIPAddress: Bool {
        if self.host.contains(":") { return true }
        let parts = self.host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }

    /// The `Host` field: the port only when it is not the scheme's default.
    var authority: String {
        let bracketed = self.host.contains(":") ? "[\(self.host)]" : self.host
        return self.port == (self.secure ? 443 : 80) ? bracketed : "\(bracketed):\(self.port)"
    }
}

/// One request on a fresh connection (`Connection: close`): TLS from the shared `TLSClient`
/// target when the target is `https`, NIOHTTP1's client codec, and one deadline covering connect,
/// handshake and the whole response. No redirects. The JWKS fetcher and the OTLP exporter send
/// through it.
enum OneShotHTTP {
    struct Response: Sendable {
        var status: HTTPResponseStatus
        var headers: HTTPHeaders
        /// Empty unless the exchange kept the body.
        var body: [UInt8]
    }

    struct Failure: Error, CustomStringConvertible, Sendable {
        var description: String
        /// Set when the server answered with a status the caller does not accept.
        var status: HTTPResponseStatus? = nil
    }

    /// Sends `head` (plus `host` and `connection: close`) and `body`, and completes with the
    /// response once it ended. A status `accept` refuses fails at once; with `maxBodyBytes` the
    /// body is kept up to that size (larger fails), without it the body is read and dropped.
    static func exchange(
        _ endpoint: some OneShotTarget, tls: TLSClientContext?, head: HTTPRequestHead, body: ByteBuffer? = nil,
        accept: @escaping @Sendable (HTTPResponseStatus) -> Bool, maxBodyBytes: Int?, timeout: TimeAmount,
        on eventLoop: EventLoop
    ) -> EventLoopFuture<Response> {
        let promise = eventLoop.makePromise(of: Response.self)
        let host = endpoint.host
        let hostIsIPAddress = endpoint.hostIsIPAddress
        let authority = endpoint.authority
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tls {
                        try sync.addHandler(TLSClientHandler(context: tls, host: host, hostIsIPAddress: hostIsIPAddress))
                    }
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(OneShotResponseCollector(promise: promise, accept: accept, maxBodyBytes: maxBodyBytes))
                }
            }
        let deadline = eventLoop.scheduleTask(in: timeout) {
            promise.fail(Failure(description: "no complete response within \(timeout.nanoseconds / 1_000_000) ms"))
        }
        var requestHead = head
        requestHead.headers.replaceOrAdd(name: "host", value: authority)
        requestHead.headers.replaceOrAdd(name: "connection", value: "close")
        let finalHead = requestHead
        bootstrap.connect(host: host, port: endpoint.port).whenComplete { result in
            switch result {
            case .failure(let error):
                promise.fail(Failure(description: "connect to \(authority): \(error)"))
            case .success(let channel):
                channel.write(HTTPClientRequestPart.head(finalHead), promise: nil)
                if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
                channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
                promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
            }
        }
        promise.futureResult.whenComplete { _ in deadline.cancel() }
        return promise.futureResult
    }
}

/// Collects one response for `OneShotHTTP`. The deadline may complete the promise first; NIO
/// ignores a second completion, and the channel is closed.
final class OneShotResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<OneShotHTTP.Response>
    private let accept: @Sendable (HTTPResponseStatus) -> Bool
    private let maxBodyBytes: Int?
    private var head: HTTPResponseHead?
    private var body: [UInt8] = []
    private var done = false

    init(promise: EventLoopPromise<OneShotHTTP.Response>, accept: @escaping @Sendable (HTTPResponseStatus) -> Bool, maxBodyBytes: Int?) {
        self.promise = promise
        self.accept = accept
        self.maxBodyBytes = maxBodyBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else { return }
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            guard self.accept(head.status) else {
                self.finish(.failure(OneShotHTTP.Failure(description: "HTTP \(head.status.code)", status: head.status)), context: context)
                return
            }
            self.head = head
        case .body(let chunk):
            guard let limit = self.maxBodyBytes else { return }
            guard self.body.count + chunk.readableBytes <= limit else {
                self.finish(.failure(OneShotHTTP.Failure(description: "body larger than \(limit) bytes")), context: context)
                return
            }
            self.body.append(contentsOf: chunk.readableBytesView)
        case .end:
            guard let head = self.head else { return }
            self.finish(.success(OneShotHTTP.Response(status: head.status, headers: head.headers, body: self.body)), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.finish(.failure(OneShotHTTP.Failure(description: "connection closed before the response ended")), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.finish(.failure(OneShotHTTP.Failure(description: "\(error)")), context: context)
    }

    private func finish(_ result: Result<OneShotHTTP.Response, Error>, context: ChannelHandlerContext) {
        guard !self.done else { return }
        self.done = true
        self.promise.completeWith(result)
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension OneShotResponseCollector: Sendable {}
