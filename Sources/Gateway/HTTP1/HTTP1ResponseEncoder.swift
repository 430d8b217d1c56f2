import NIOCore
import NIOHTTP1

/// Serializes the client connection's responses as NIO's `HTTPResponseEncoder` does with
/// `automaticallySetFramingHeaders` off (the handler writes the framing fields itself), but writes
/// each head into one buffer kept for the connection: once the transport below has written the
/// previous head out, its storage is reused, so a response head costs no allocation.
final class HTTP1ResponseEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = IOData

    private var head: ByteBuffer?
    /// The response's body is sent with chunked transfer coding (its head says so, on HTTP/1.1).
    private var isChunked = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch Self.unwrapOutboundIn(data) {
        case .head(let response):
            self.isChunked = response.version.major == 1 && response.version.minor >= 1
                && Self.firstTransferEncoding(response.headers) == "chunked"
            var buffer = self.head.take() ?? context.channel.allocator.buffer(capacity: 256)
            // Unique again once the transport released the previous head: cleared in place.
            buffer.clear()
            buffer.writeStaticString("HTTP/")
            buffer.writeString(String(response.version.major))
            buffer.writeStaticString(".")
            buffer.writeString(String(response.version.minor))
            buffer.writeStaticString(" ")
            buffer.writeString(String(response.status.code))
            buffer.writeStaticString(" ")
            buffer.writeString(response.status.reasonPhrase)
            buffer.writeStaticString("\r\n")
            // Indexed, not iterated: an iterator costs an allocation per element in a debug build.
            var index = response.headers.startIndex
            while index != response.headers.endIndex {
                let field = response.headers[index]
                buffer.writeString(field.name)
                buffer.writeStaticString(": ")
                buffer.writeString(field.value)
                buffer.writeStaticString("\r\n")
                index = response.headers.index(after: index)
            }
            buffer.writeStaticString("\r\n")
            self.head = buffer
            context.write(Self.wrapOutboundOut(.byteBuffer(buffer)), promise: promise)
        case .body(let body):
            guard self.isChunked, body.readableBytes > 0 else {
                context.write(Self.wrapOutboundOut(body), promise: promise)
                return
            }
            var size = context.channel.allocator.buffer(capacity: 32)
            size.writeString(String(body.readableBytes, radix: 16))
            size.writeStaticString("\r\n")
            context.write(Self.wrapOutboundOut(.byteBuffer(size)), promise: nil)
            context.write(Self.wrapOutboundOut(body), promise: nil)
            size.moveReaderIndex(forwardBy: size.readableBytes - 2)
            context.write(Self.wrapOutboundOut(.byteBuffer(size)), promise: promise)
        case .end(let trailers):
            if self.isChunked {
                var buffer = context.channel.allocator.buffer(capacity: 8)
                buffer.writeStaticString("0\r\n")
                if let trailers {
                    for (name, value) in trailers {
                        buffer.writeString(name)
                        buffer.writeStaticString(": ")
                        buffer.writeString(value)
                        buffer.writeStaticString("\r\n")
                    }
                }
                buffer.writeStaticString("\r\n")
                context.write(Self.wrapOutboundOut(.byteBuffer(buffer)), promise: promise)
            } else if let promise {
                // Nothing to write, but the promise completes in order with the writes before it.
                context.write(Self.wrapOutboundOut(.byteBuffer(ByteBuffer())), promise: promise)
            }
            self.isChunked = false
        }
    }

    /// NIO's rule: the first `Transfer-Encoding` field decides.
    private static func firstTransferEncoding(_ headers: HTTPHeaders) -> String? {
        var index = headers.startIndex
        while index != headers.endIndex {
            let field = headers[index]
            if field.name.equalsIgnoringASCIICase("transfer-encoding") { return field.value }
            index = headers.index(after: index)
        }
        return nil
    }
}
