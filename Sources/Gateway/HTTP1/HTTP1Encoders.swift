import NIOCore
import NIOHTTP1

extension HTTPHeaders {
    /// The fields' size as HTTP/1.x writes them, each `name: value` CRLF.
    var encodedSize: Int {
        // Indexed, not iterated: an iterator costs an allocation per element in a debug build,
        // which the allocation budget of `make test` would count.
        var size = 0
        var index = self.startIndex
        while index != self.endIndex {
            let field = self[index]
            size += field.name.utf8.count + field.value.utf8.count + 4
            index = self.index(after: index)
        }
        return size
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
    private(set) var isChunked = false
    /// A forwarded response head, filled but not passed down yet: the body (and the end) that
    /// usually come in the same read from the upstream join it in one buffer, one write through
    /// the pipeline instead of two or three, while the whole stays within `maxKeptCapacity` (a
    /// larger body goes as its own write, not copied). Anything else written goes after it, and
    /// a flush must pass it down first (`writeWaitingHead`).
    private var waitingHead: ByteBuffer?

    /// One part of a response, as NIO's `HTTPResponseEncoder` writes it.
    mutating func writeResponse(_ part: HTTPServerResponsePart, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        switch part {
        case .head(let response):
            self.writeHead(version: response.version, versionFirst: true, headers: response.headers, context: context, promise: promise) {
                let code = response.status.code
                if (100...999).contains(code) {
                    $0.writeInteger(UInt8(ascii: "0") + UInt8(code / 100))
                    $0.writeInteger(UInt8(ascii: "0") + UInt8(code / 10 % 10))
                    $0.writeInteger(UInt8(ascii: "0") + UInt8(code % 10))
                } else {
                    $0.writeString(String(code))
                }
                $0.writeStaticString(" ")
                $0.writeString(response.status.reasonPhrase)
            }
        case .body(let body):
            self.writeBody(body, context: context, promise: promise)
        case .end(let trailers):
            self.writeEnd(trailers, context: context, promise: promise)
        }
    }

    /// One part of a request, as NIO's `HTTPRequestEncoder` writes it.
    mutating func writeRequest(_ part: HTTPClientRequestPart, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        switch part {
        case .head(let request):
            self.writeHead(version: request.version, versionFirst: false, headers: request.headers, context: context, promise: promise) {
                $0.writeString(request.method.rawValue)
                $0.writeStaticString(" ")
                $0.writeString(request.uri)
            }
        case .body(let body):
            self.writeBody(body, context: context, promise: promise)
        case .end(let trailers):
            self.writeEnd(trailers, context: context, promise: promise)
        }
    }

    /// A forwarded request head (`ForwardedRequestHead`), written from the client's head.
    mutating func writeForwarded(_ forwarded: ForwardedRequestHead, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        self.isChunked = forwarded.isChunked
        self.writeKept(context: context, promise: promise) { forwarded.write(to: &$0) }
    }

    /// A forwarded response head (`ForwardedResponseHead`), written from the upstream's head;
    /// returns its body's framing.
    mutating func writeForwardedResponse(
        _ forwarded: ForwardedResponseHead, close: Bool, context: ChannelHandlerContext
    ) -> HeaderRewriter.ResponseFraming {
        var buffer = self.keptBuffer(context: context)
        let framing = forwarded.write(to: &buffer, close: close)
        self.waitingHead = buffer
        self.isChunked = framing == .chunked
        return framing
    }

    /// Passes a waiting head down (before a flush, or anything else written).
    mutating func writeWaitingHead(context: ChannelHandlerContext) {
        guard let buffer = self.waitingHead.take() else { return }
        self.writeKept(buffer, context: context, promise: nil)
    }

    /// Writes the start line (the version, then the caller's part for a response; the caller's
    /// part, then the version for a request) and the fields into the kept buffer.
    mutating func writeHead(
        version: HTTPVersion, versionFirst: Bool, headers: HTTPHeaders, context: ChannelHandlerContext,
        promise: EventLoopPromise<Void>?, startLine: (inout ByteBuffer) -> Void
    ) {
        self.isChunked = version.major == 1 && version.minor >= 1 && Self.firstTransferEncoding(headers) == "chunked"
        self.writeKept(context: context, promise: promise) { buffer in
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
        }
    }

    /// Fills the kept head buffer and passes it down.
    private mutating func writeKept(
        context: ChannelHandlerContext, promise: EventLoopPromise<Void>?, _ fill: (inout ByteBuffer) -> Void
    ) {
        var buffer = self.keptBuffer(context: context)
        fill(&buffer)
        self.writeKept(buffer, context: context, promise: promise)
    }

    /// The kept head buffer, empty, once a waiting head is written (it may be that buffer).
    private mutating func keptBuffer(context: ChannelHandlerContext) -> ByteBuffer {
        self.writeWaitingHead(context: context)
        var buffer = self.head.take() ?? context.channel.allocator.buffer(capacity: 256)
        // Unique again once the transport released the previous head: cleared in place.
        buffer.clear()
        return buffer
    }

    private mutating func writeKept(_ buffer: ByteBuffer, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        // An exceptional head's storage is not held for the rest of the connection.
        self.head = buffer.capacity <= Self.maxKeptCapacity ? buffer : nil
        context.write(NIOAny(IOData.byteBuffer(buffer)), promise: promise)
    }

    mutating func writeBody(_ body: IOData, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        if var waiting = self.waitingHead.take() {
            // Joined while the whole response stays within a kept buffer (12: a chunk's size
            // line and CRLF, then the last chunk); a body with a promise goes now, so the promise
            // completes when it is written.
            if case .byteBuffer(var bytes) = body, promise == nil,
                waiting.readableBytes + bytes.readableBytes + 12 <= Self.maxKeptCapacity
            {
                if self.isChunked && bytes.readableBytes > 0 {
                    waiting.writeString(String(bytes.readableBytes, radix: 16))
                    waiting.writeStaticString("\r\n")
                    waiting.writeBuffer(&bytes)
                    waiting.writeStaticString("\r\n")
                } else {
                    waiting.writeBuffer(&bytes)
                }
                self.waitingHead = waiting
                return
            }
            self.writeKept(waiting, context: context, promise: nil)
        }
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
        if var head = self.waitingHead.take() {
            if self.isChunked { Self.writeLastChunk(trailers, to: &head) }
            self.isChunked = false
            self.writeKept(head, context: context, promise: promise)
            return
        }
        if self.isChunked {
            var buffer = context.channel.allocator.buffer(capacity: 8)
            Self.writeLastChunk(trailers, to: &buffer)
            context.write(NIOAny(IOData.byteBuffer(buffer)), promise: promise)
        } else if let promise {
            // Nothing to write, but the promise completes in order with the writes before it.
            context.write(NIOAny(IOData.byteBuffer(ByteBuffer())), promise: promise)
        }
        self.isChunked = false
    }

    private static func writeLastChunk(_ trailers: HTTPHeaders?, to buffer: inout ByteBuffer) {
        buffer.writeStaticString("0\r\n")
        if let trailers {
            Self.write(trailers, to: &buffer)
        } else {
            buffer.writeStaticString("\r\n")
        }
    }

    private static func write(_ version: HTTPVersion, to buffer: inout ByteBuffer) {
        switch (version.major, version.minor) {
        case (1, 1): buffer.writeStaticString("HTTP/1.1")
        case (1, 0): buffer.writeStaticString("HTTP/1.0")
        default:
            buffer.writeStaticString("HTTP/")
            buffer.writeString(String(version.major))
            buffer.writeStaticString(".")
            buffer.writeString(String(version.minor))
        }
    }

    /// The fields, each `name: value` CRLF, then the empty line: sized first, then copied in one
    /// pass (a `writeString` per part checks capacity and uniqueness four times per field).
    private static func write(_ headers: HTTPHeaders, to buffer: inout ByteBuffer) {
        let size = headers.encodedSize + 2
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
            var out = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            var index = headers.startIndex
            while index != headers.endIndex {
                let field = headers[index]
                out = copy(field.name, to: out)
                out[0] = UInt8(ascii: ":")
                out[1] = UInt8(ascii: " ")
                out = copy(field.value, to: out + 2)
                out[0] = UInt8(ascii: "\r")
                out[1] = UInt8(ascii: "\n")
                out += 2
                index = headers.index(after: index)
            }
            out[0] = UInt8(ascii: "\r")
            out[1] = UInt8(ascii: "\n")
            return size
        }
    }

    /// Copies the string's UTF-8 to `out`; returns the byte after it.
    private static func copy(_ string: String, to out: UnsafeMutablePointer<UInt8>) -> UnsafeMutablePointer<UInt8> {
        string.withUTF8Bytes { bytes in
            guard let base = bytes.baseAddress else { return out }
            out.update(from: base, count: bytes.count)
            return out + bytes.count
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
