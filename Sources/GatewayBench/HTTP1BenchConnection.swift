import NIOCore
import TLSClient

/// One HTTP/1.1 keep-alive connection of the load generator: at most one request in flight
/// (no pipelining, as wrk and browsers). Each target's request is encoded once per connection and
/// written as is; responses are read by `HTTP1ResponseReader` straight from the bytes.
final class HTTP1BenchConnection: ChannelInboundHandler, BenchConnection {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private struct PreparedRequest {
        var bytes: ByteBuffer
        var isHead: Bool
    }

    private let worker: LoopWorker
    private let index: Int
    /// The encoded request of each target, by target index.
    private let requests: [PreparedRequest]
    private let tls: Bool
    private var context: ChannelHandlerContext?
    private var ready = false
    private var closing = false
    private var current: (tag: RequestTag, sent: UInt64)?
    private var reader = HTTP1ResponseReader()
    private var error: (any Error)?

    init(worker: LoopWorker, index: Int, template: RequestTemplate, tls: Bool) {
        self.worker = worker
        self.index = index
        self.tls = tls
        self.requests = template.requests.map { request in
            PreparedRequest(bytes: Self.encode(request, authority: template.target.authority), isHead: request.method == "HEAD")
        }
    }

    /// The request as it goes on the wire. Names and values were checked when the run was set up
    /// (tokens, no CR or LF), so nothing here can split the message.
    static func encode(_ request: BenchRequest, authority: String) -> ByteBuffer {
        var fields: [(String, String)] = [("host", authority), ("user-agent", "gateway-bench")]
        for header in request.headers {
            // A Host of the request's own replaces the URL's (virtual hosts behind one address).
            if header.name.lowercased() == "host" { fields.removeAll { $0.0 == "host" } }
            fields.append((header.name, header.value))
        }
        if request.sendsContentLength && !fields.contains(where: { $0.0.lowercased() == "content-length" }) {
            fields.append(("content-length", String(request.body.count)))
        }
        var bytes = ByteBufferAllocator().buffer(capacity: 256 + request.body.count)
        bytes.writeString("\(request.method) \(request.path) HTTP/1.1\r\n")
        for (name, value) in fields { bytes.writeString("\(name): \(value)\r\n") }
        bytes.writeString("\r\n")
        bytes.writeBytes(request.body)
        return bytes
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
        let prepared = self.requests[request.target]
        self.reader.expect(head: prepared.isHead)
        context.writeAndFlush(self.wrapOutboundOut(prepared.bytes), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.closing else { return }
        var buffer = self.unwrapInboundIn(data)
        do {
            guard let response = try self.reader.read(&buffer) else { return }
            if buffer.readableBytes > 0 {
                throw HTTP1ResponseError(description: "\(buffer.readableBytes) bytes after the response")
            }
            self.complete(response, context: context)
        } catch {
            self.errorCaught(context: context, error: error)
        }
    }

    private func complete(_ response: HTTP1ResponseReader.Response, context: ChannelHandlerContext) {
        guard let current = self.current else { return }
        self.current = nil
        if !response.keepAlive { self.closing = true }
        self.worker.completed(current.tag, status: response.status)
        if self.closing { context.close(promise: nil) }
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
        // A body delimited by the close is complete now.
        if !self.closing, let response = self.reader.endOfInput() { self.complete(response, context: context) }
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
