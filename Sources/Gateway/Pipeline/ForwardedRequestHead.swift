import NIOCore
import NIOHTTP1

/// Where `HeaderRewriter.rewriteRequestFields` puts the upstream request's fields: the two it
/// adds as numbers are written without a `String` where the sink allows.
protocol UpstreamFieldSink: HeadFieldSink {
    mutating func addContentLength(_ length: Int)
    mutating func addTraceparent(_ trace: TraceContext)
}

/// The request head sent upstream, kept as the client's decoded head plus what the rewrite needs,
/// and written straight into the upstream connection's head buffer in one pass: no rebuilt
/// `HTTPHeaders` array, no `traceparent` or `Content-Length` string. The rules are
/// `HeaderRewriter.rewriteRequestFields`, the same that `HeaderRewriter.upstreamRequest` applies
/// to build an `HTTPRequestHead` (`head`, for the paths that edit it further); a differential test
/// holds the two to the same bytes.
struct ForwardedRequestHead {
    var client: RequestHead
    var framing: BodyFraming
    var info: ForwardingInfo
    var removing: FieldNameSet

    /// The same head as an `HTTPRequestHead`.
    var head: HTTPRequestHead {
        HeaderRewriter.upstreamRequest(self.client, framing: self.framing, info: self.info, removing: self.removing)
    }

    /// Whether the body goes chunked (the rewrite adds `Transfer-Encoding: chunked` exactly then).
    var isChunked: Bool { self.framing == .chunked }

    /// Appends the head: request line, fields, empty line.
    func write(to buffer: inout ByteBuffer) {
        let start = buffer.writerIndex
        HeaderRewriter.inOneOrTwoPasses(self.client.headers) { named -> Void? in
            buffer.moveWriterIndex(to: start)
            return self.write(to: &buffer, named: named) ? () : nil
        }
    }

    private func write(to buffer: inout ByteBuffer, named: Set<String>?) -> Bool {
        let bound = self.sizeBound()
        return buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { raw in
            var sink = FieldBytesSink(raw.bindMemory(to: UInt8.self))
            sink.copy(self.client.method.rawValue)
            sink.copy(" ")
            sink.copy(self.client.uri)
            sink.copy(" HTTP/1.1\r\n")
            guard HeaderRewriter.rewriteRequestFields(
                self.client, framing: self.framing, info: self.info, removing: self.removing, named: named, into: &sink
            ) else { return 0 }
            sink.copy("\r\n")
            return sink.count
        } > 0
    }

    /// At least the head's size: every client field could be kept (and `X-Forwarded-For` values
    /// appear again in the joined chain), plus every field the rewrite adds.
    private func sizeBound() -> Int {
        let fields = self.client.headers.encodedSize
        var added = 0
        for (name, value) in self.info.addedHeaders { added += name.utf8.count + value.utf8.count + 4 }
        let info = self.info
        let gatewayFields = info.fallbackHost.utf8.count + info.peer.utf8.count + info.scheme.utf8.count
            + (info.host?.utf8.count ?? 0) + info.requestID.utf8.count + TraceContext.headerValueLength
        // Names, separators and numbers of the added fields: well under 256 bytes.
        return self.client.method.rawValue.utf8.count + self.client.uri.utf8.count + 2 * fields + added + gatewayFields + 256
    }
}

/// What a `RequestExchange` sends upstream as its head.
enum UpstreamRequestHead {
    /// The common case: written from the client's head in one pass.
    case forwarded(ForwardedRequestHead)
    /// A head edited after the rewrite (a token taken out of a cookie or the query, a WebSocket
    /// handshake): sent as built.
    case rewritten(HTTPRequestHead)

    var head: HTTPRequestHead {
        switch self {
        case .forwarded(let forwarded): return forwarded.head
        case .rewritten(let head): return head
        }
    }
}

extension FieldBytesSink: UpstreamFieldSink {
    mutating func addContentLength(_ length: Int) {
        self.copy("content-length: ")
        // Validated framing: never negative.
        self.writeDecimal(UInt(max(0, length)))
        self.copy("\r\n")
    }

    mutating func addTraceparent(_ trace: TraceContext) {
        self.copy("traceparent: ")
        self.reserve(TraceContext.headerValueLength)
        self.advance { trace.writeHeaderValue(into: $0) }
        self.copy("\r\n")
    }
}
