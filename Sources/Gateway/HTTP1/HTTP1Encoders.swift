import NIOCore
import NIOHTTP1

/// Serializes the client connection's responses as NIO's `HTTPResponseEncoder` does with
/// `automaticallySetFramingHeaders` off (the handler writes the framing fields itself), but writes
/// each head into one buffer kept for the connection: once the transport below has written the
/// previous head out, its storage is reused, so a response head costs no allocation.
final class HTTP1ResponseEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = IOData

    private var framing = KeptHeadFraming()

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch Self.unwrapOutboundIn(data) {
        case .head(let response):
            self.framing.writeHead(
                version: response.version, versionFirst: true, headers: response.headers, context: context, promise: promise
            ) {
                $0.writeString(String(response.status.code))
                $0.writeStaticString(" ")
                $0.writeString(response.status.reasonPhrase)
            }
        case .body(let body):
            self.framing.writeBody(body, context: context, promise: promise)
        case .end(let trailers):
            self.framing.writeEnd(trailers, context: context, promise: promise)
        }
    }
}

/// The upstream connection's request encoder: NIO's `HTTPRequestEncoder` with framing left to
/// the caller, its heads written into one kept buffer like `HTTP1ResponseEncoder`'s.
final class HTTP1RequestEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = IOData

    private var framing = KeptHeadFraming()

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch Self.unwrapOutboundIn(data) {
        case .head(let request):
            self.framing.writeHead(
                version: request.version, versionFirst: false, headers: request.headers, context: context, promise: promise
            ) {
                $0.writeString(request.method.rawValue)
                $0.writeStaticString(" ")
                $0.writeString(request.uri)
            }
        case .body(let body):
            self.framing.writeBody(body, context: context, promise: promise)
        case .end(let trailers):
            self.framing.writeEnd(trailers, context: context, promise: promise)
        }
    }
}

/// HTTP/1.x message framing as NIO's encoders write it when the caller sets the framing fields:
/// a head (the start line, then the fields as given), the body as is or in chunks when the first
/// `Transfer-Encoding` field of an HTTP/1.1 head is exactly `chunked`, and the last chunk.
struct KeptHeadFraming {
    /// The last head written: reused once the transport below has let go of it.
    private var head: ByteBuffer?
    /// Ordinary heads fit in far less; a larger one is not kept.
    static let maxKeptCapacity = 4096
    private var isChunked = false

    /// Writes the start line (the version, then the caller's part for a response; the caller's
    /// part, then the version for a request) and the fields into the kept buffer.
    mutating func writeHead(
        version: HTTPVersion, versionFirst: Bool, headers: HTTPHeaders, context: ChannelHandlerContext,
        promise: EventLoopPromise<Void>?, startLine: (inout ByteBuffer) -> Void
    ) {
        self.isChunked = version.major == 1 && version.minor >= 1 && Self.firstTransferEncoding(headers) == "chunked"
        var buffer = self.head.take() ?? context.channel.allocator.buffer(capacity: 256)
        // Unique again once the transport released the previous head: cleared in place.
        buffer.clear()
        if versionFirst {
            Self.write(version, to: &buffer)
            buffer.writeStaticString(" ")
            startLine(&buffer)
        } else {
            startLine(&buffer)
            buffer.writeStaticString(" ")
            Self.write(version, to: &buffer)
        }
        buffer.writeStaticString("\r\n")
        Self.write(headers, to: &buffer)
        // An exceptional head's storage is not held for the rest of the connection.
        self.head = buffer.capacity <= Self.maxKeptCapacity ? buffer : nil
        context.write(NIOAny(IOData.byteBuffer(buffer)), promise: promise)
    }

    func writeBody(_ body: IOData, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        guard self.isChunked, body.readableBytes > 0 else {
            context.write(NIOAny(body), promise: promise)
            return
        }
        var size = context.channel.allocator.buffer(capacity: 32)
        size.writeString(String(body.readableBytes, radix: 16))
        size.writeStaticString("\r\n")
        context.write(NIOAny(IOData.byteBuffer(size)), promise: nil)
        context.write(NIOAny(body), promise: nil)
        size.moveReaderIndex(forwardBy: size.readableBytes - 2)
        context.write(NIOAny(IOData.byteBuffer(size)), promise: promise)
    }

    mutating func writeEnd(_ trailers: HTTPHeaders?, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        if self.isChunked {
            var buffer = context.channel.allocator.buffer(capacity: 8)
            buffer.writeStaticString("0\r\n")
            if let trailers {
                Self.write(trailers, to: &buffer)
            } else {
                buffer.writeStaticString("\r\n")
            }
            context.write(NIOAny(IOData.byteBuffer(buffer)), promise: promise)
        } else if let promise {
            // Nothing to write, but the promise completes in order with the writes before it.
            context.write(NIOAny(IOData.byteBuffer(ByteBuffer())), promise: promise)
        }
        self.isChunked = false
    }

    private static func write(_ version: HTTPVersion, to buffer: inout ByteBuffer) {
        buffer.writeStaticString("HTTP/")
        buffer.writeString(String(version.major))
        buffer.writeStaticString(".")
        buffer.writeString(String(version.minor))
    }

    /// The fields, each `name: value` CRLF, then the empty line.
    private static func write(_ headers: HTTPHeaders, to buffer: inout ByteBuffer) {
        // Indexed, not iterated: an iterator costs an allocation per element in a debug build.
        var index = headers.startIndex
        while index != headers.endIndex {
            let field = headers[index]
            buffer.writeString(field.name)
            buffer.writeStaticString(": ")
            buffer.writeString(field.value)
            buffer.writeStaticString("\r\n")
            index = headers.index(after: index)
        }
        buffer.writeStaticString("\r\n")
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
