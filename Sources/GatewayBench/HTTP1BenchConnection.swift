import NIOCore
import NIOHTTP1
import TLSClient

/// One HTTP/1.1 keep-alive connection of the load generator: at most one request in flight
/// (no pipelining, as wrk and browsers), NIOHTTP1's encoder and decoder below it.
final class HTTP1BenchConnection: ChannelInboundHandler, BenchConnection {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let worker: LoopWorker
    private let index: Int
    /// Head and body of each request, by target index.
    private let requests: [(head: HTTPRequestHead, body: ByteBuffer?)]
    private let tls: Bool
    private var context: ChannelHandlerContext?
    private var ready = false
    private var closing = false
    private var current: (tag: RequestTag, sent: UInt64)?
    private var status: Int?
    private var error: (any Error)?

    init(worker: LoopWorker, index: Int, template: RequestTemplate, tls: Bool) {
        self.worker = worker
        self.index = index
        self.tls = tls
        self.requests = template.requests.map { request in
            var headers = HTTPHeaders([("host", template.target.authority), ("user-agent", "gateway-bench")])
            for header in request.headers {
                // A Host of the request's own replaces the URL's (virtual hosts behind one address).
                if header.name.lowercased() == "host" { headers.remove(name: "host") }
                headers.add(name: header.name, value: header.value)
            }
            if request.sendsContentLength && !headers.contains(name: "content-length") {
                headers.add(name: "content-length", value: String(request.body.count))
            }
            let head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: request.method), uri: request.path, headers: headers)
            return (head, request.body.isEmpty ? nil : ByteBuffer(bytes: request.body))
        }
    }

    var freeSlots: Int { self.ready && !self.closing && self.current == nil ? 1 : 0 }
    var inFlight: Int { self.current == nil ? 0 : 1 }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelActive(context: ChannelHandlerContext) {
        if !self.tls { self.becomeReady() }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSClientHandshakeCompleted {
            if let selected = event.negotiatedProtocol, selected != "http/1.1" {
                self.error = TLSClientError.alpn("server selected \(selected), not http/1.1")
                context.close(promise: nil)
                return
            }
            self.becomeReady()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func becomeReady() {
        guard !self.ready else { return }
        self.ready = true
        self.worker.connectionReady(self.index, self)
    }

    func send(_ request: RequestTag, nowNanos: UInt64) {
        guard let context, self.current == nil else { return }
        self.current = (request, nowNanos)
        self.status = nil
        let prepared = self.requests[request.target]
        context.write(self.wrapOutboundOut(.head(prepared.head)), promise: nil)
        if let body = prepared.body { context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let response):
            self.status = Int(response.status.code)
            if !response.isKeepAlive { self.closing = true }
        case .body:
            break
        case .end:
            guard let current = self.current, let status = self.status else { return }
            self.current = nil
            self.worker.completed(current.tag, status: status)
            if self.closing { context.close(promise: nil) }
        }
    }

    func expire(sentBefore cutoffNanos: UInt64) {
        guard let current = self.current, current.sent < cutoffNanos else { return }
        // The response may still come: the connection cannot be reused, so close it.
        self.current = nil
        self.closing = true
        self.worker.failed(.timeout, current.tag)
        self.context?.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.error == nil { self.error = error }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let wasReady = self.ready
        self.ready = false
        self.closing = true
        if let current = self.current {
            self.current = nil
            self.worker.failed(.reset, current.tag)
        }
        self.worker.connectionClosed(self.index, wasReady: wasReady, error: self.error)
        context.fireChannelInactive()
    }

    func close() {
        self.closing = true
        self.context?.close(promise: nil)
    }
}

@available(*, unavailable)
extension HTTP1BenchConnection: Sendable {}
