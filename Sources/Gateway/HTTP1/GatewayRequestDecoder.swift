import NIOCore
import NIOHTTP1

/// The client connection's request decoder: heads in `StrictRequestHead`'s shape, and their
/// `Content-Length` bodies, are decoded here without llhttp's per-field callbacks; the first head
/// outside that shape, and everything after it on the connection, goes to NIO's llhttp decoder
/// unchanged. Both emit the same `HTTPServerRequestPart`s, so the handler behind cannot tell which
/// one decoded a request.
///
/// Staying on llhttp once it took over keeps the switch at a message boundary: llhttp carries
/// state (a stopped parser after an upgrade request, an error) that must not be bypassed.
final class GatewayRequestDecoder: ByteToMessageDecoder {
    typealias InboundOut = HTTPServerRequestPart

    private enum Mode {
        /// At a message boundary, reading a head.
        case head
        /// Inside a `Content-Length` body: bytes still to come, and whether the connection
        /// stays open after it.
        case body(remaining: Int, keepAlive: Bool)
        /// After a request that is not kept alive: llhttp refuses anything but CR and LF.
        case closed
        /// llhttp decodes everything from here on.
        case llhttp
    }

    private let llhttp: HTTPRequestDecoder
    private let maxHeadBytes: Int
    private var mode = Mode.head
    /// Field offsets of the head being parsed; its storage is reused from request to request.
    private var fields: [StrictRequestHead.Field] = []
    /// Readable bytes already known to hold no line end: a long unfinished head is parsed again
    /// only once a new line has arrived (a client dribbling bytes costs no rescans).
    private var scannedBytes = 0
    /// Up to this many bytes, an unfinished head is parsed on every read.
    static let eagerBytes = 1024

    init(llhttp: HTTPRequestDecoder, maxHeadBytes: Int) {
        self.llhttp = llhttp
        self.maxHeadBytes = maxHeadBytes
    }

    func decoderAdded(context: ChannelHandlerContext) {
        self.llhttp.decoderAdded(context: context)
    }

    func decoderRemoved(context: ChannelHandlerContext) {
        self.llhttp.decoderRemoved(context: context)
    }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        switch self.mode {
        case .llhttp:
            return try self.llhttp.decode(context: context, buffer: &buffer)
        case .body(let remaining, let keepAlive):
            let length = min(remaining, buffer.readableBytes)
            guard length > 0 else { return .needMoreData }
            context.fireChannelRead(Self.wrapInboundOut(.body(buffer.readSlice(length: length)!)))
            if length == remaining {
                self.mode = keepAlive ? .head : .closed
                context.fireChannelRead(Self.wrapInboundOut(.end(nil)))
            } else {
                self.mode = .body(remaining: remaining - length, keepAlive: keepAlive)
            }
            return .continue
        case .closed:
            while let byte = buffer.readInteger(as: UInt8.self) {
                guard byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n") else { throw HTTPParserError.closedConnection }
            }
            return .needMoreData
        case .head:
            return self.decodeHead(context: context, buffer: &buffer)
        }
    }

    private func decodeHead(context: ChannelHandlerContext, buffer: inout ByteBuffer) -> DecodingState {
        let readable = buffer.readableBytes
        guard readable > 0 else { return .needMoreData }
        // A short head is parsed on every read, so bytes llhttp would refuse at once are refused at
        // once; past that, only a new line or the limit can change the verdict.
        if readable > Self.eagerBytes && readable < self.maxHeadBytes {
            let lineEnded = buffer.withUnsafeReadableBytes { bytes in
                var index = min(self.scannedBytes, readable)
                while index < readable, bytes[index] != UInt8(ascii: "\n") { index += 1 }
                return index < readable
            }
            if !lineEnded {
                self.scannedBytes = readable
                return .needMoreData
            }
        }
        let outcome = buffer.withUnsafeReadableBytes { bytes -> (StrictRequestHead.Outcome, HTTPRequestHead?) in
            let outcome = StrictRequestHead.parse(bytes, maxHeadBytes: self.maxHeadBytes, fields: &self.fields)
            guard case .parsed(let parsed) = outcome else { return (outcome, nil) }
            return (outcome, StrictRequestHead.makeHead(parsed, fields: self.fields, bytes: bytes))
        }
        switch outcome {
        case (.parsed(let parsed), let head?):
            self.scannedBytes = 0
            buffer.moveReaderIndex(forwardBy: parsed.headLength)
            context.fireChannelRead(Self.wrapInboundOut(.head(head)))
            if parsed.contentLength > 0 {
                self.mode = .body(remaining: parsed.contentLength, keepAlive: parsed.keepAlive)
            } else {
                if !parsed.keepAlive { self.mode = .closed }
                context.fireChannelRead(Self.wrapInboundOut(.end(nil)))
            }
            return .continue
        case (.needMoreBytes, _):
            self.scannedBytes = readable
            return .needMoreData
        default:
            self.mode = .llhttp
            return .continue
        }
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        if case .llhttp = self.mode {
            return try self.llhttp.decodeLast(context: context, buffer: &buffer, seenEOF: seenEOF)
        }
        while buffer.readableBytes > 0, case .continue = try self.decode(context: context, buffer: &buffer) {
            if case .llhttp = self.mode {
                return try self.llhttp.decodeLast(context: context, buffer: &buffer, seenEOF: seenEOF)
            }
        }
        guard seenEOF else { return .needMoreData }
        switch self.mode {
        case .body:
            // The connection ended inside a body, as llhttp reports it.
            throw HTTPParserError.invalidEOFState
        case .head where buffer.readableBytes > 0:
            // An unfinished head: llhttp judges it, with the EOF.
            self.mode = .llhttp
            return try self.llhttp.decodeLast(context: context, buffer: &buffer, seenEOF: seenEOF)
        default:
            break
        }
        return .needMoreData
    }
}
