import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import TLSClient

/// Where `jwt.jwks_url` points, split once at config load.
struct JWKSEndpoint: Sendable, Equatable {
    var host: String
    var port: Int
    /// Origin-form request target (path and query).
    var target: String

    init?(url: String) {
        guard let parsed = URL(string: url), parsed.scheme?.lowercased() == "https",
              let host = parsed.host, !host.isEmpty else { return nil }
        self.host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        self.port = parsed.port ?? 443
        var target = parsed.path.isEmpty ? "/" : parsed.path
        if let query = parsed.query { target += "?" + query }
        self.target = target
    }

    /// True for an IPv4 or IPv6 literal: no SNI, verified against the certificate's IP SANs.
    var hostIsIPAddress: Bool {
        if self.host.contains(":") { return true }
        let parts = self.host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }

    /// The `Host` field: the port only when it is not 443.
    var authority: String {
        let bracketed = self.host.contains(":") ? "[\(self.host)]" : self.host
        return self.port == 443 ? bracketed : "\(bracketed):\(self.port)"
    }
}

/// A fetched JWKS document.
struct JWKSResponse: Sendable {
    var body: [UInt8]
    /// Every `Cache-Control` field value, in order.
    var cacheControl: [String]
}

struct JWKSFetchError: Error, CustomStringConvertible, Sendable {
    var description: String
    init(_ description: String) { self.description = description }
}

/// One HTTPS `GET` of the JWKS document on a fresh connection (`Connection: close`): TLS from the
/// shared `TLSClient` target, NIOHTTP1's client codec, a size cap and one deadline covering
/// connect, handshake and response. No redirects: a JWKS URL is configured, not discovered.
enum JWKSFetcher {
    /// Larger than any real key set (a few KiB), small enough that a broken server cannot make
    /// the gateway buffer much.
    static let maxBodyBytes = 1 << 20

    static func fetch(
        _ endpoint: JWKSEndpoint, tls: TLSClientContext, timeout: TimeAmount, on eventLoop: EventLoop
    ) -> EventLoopFuture<JWKSResponse> {
        let promise = eventLoop.makePromise(of: JWKSResponse.self)
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(TLSClientHandler(
                        context: tls, host: endpoint.host, hostIsIPAddress: endpoint.hostIsIPAddress))
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(JWKSResponseCollector(promise: promise))
                }
            }
        let deadline = eventLoop.scheduleTask(in: timeout) {
            promise.fail(JWKSFetchError("no complete response within \(timeout.nanoseconds / 1_000_000) ms"))
        }
        bootstrap.connect(host: endpoint.host, port: endpoint.port).whenComplete { result in
            switch result {
            case .failure(let error):
                promise.fail(JWKSFetchError("connect to \(endpoint.authority): \(error)"))
            case .success(let channel):
                var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: endpoint.target)
                head.headers.add(name: "host", value: endpoint.authority)
                head.headers.add(name: "accept", value: "application/jwk-set+json, application/json")
                head.headers.add(name: "user-agent", value: "barberpro-gateway-jwks")
                head.headers.add(name: "connection", value: "close")
                channel.write(HTTPClientRequestPart.head(head), promise: nil)
                channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
                promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
            }
        }
        promise.futureResult.whenComplete { _ in deadline.cancel() }
        return promise.futureResult
    }
}

/// Collects one response: 200 only, body up to `JWKSFetcher.maxBodyBytes`. The fetch deadline
/// may complete the promise first; NIO ignores a second completion, and the channel is closed.
private final class JWKSResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<JWKSResponse>
    private var cacheControl: [String] = []
    private var body: [UInt8] = []
    private var done = false

    init(promise: EventLoopPromise<JWKSResponse>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else { return }
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            guard head.status == .ok else {
                self.finish(.failure(JWKSFetchError("HTTP \(head.status.code)")), context: context)
                return
            }
            self.cacheControl = head.headers["cache-control"]
        case .body(let chunk):
            guard self.body.count + chunk.readableBytes <= JWKSFetcher.maxBodyBytes else {
                self.finish(.failure(JWKSFetchError("document larger than \(JWKSFetcher.maxBodyBytes) bytes")), context: context)
                return
            }
            self.body.append(contentsOf: chunk.readableBytesView)
        case .end:
            self.finish(.success(JWKSResponse(body: self.body, cacheControl: self.cacheControl)), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.finish(.failure(JWKSFetchError("connection closed before the response ended")), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.finish(.failure(JWKSFetchError("\(error)")), context: context)
    }

    private func finish(_ result: Result<JWKSResponse, Error>, context: ChannelHandlerContext) {
        guard !self.done else { return }
        self.done = true
        self.promise.completeWith(result)
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension JWKSResponseCollector: Sendable {}
