import NIOCore
import NIOHTTP1

/// Where `HeaderRewriter.rewriteRequestFields` puts the upstream request's fields.
protocol UpstreamFieldSink {
    mutating func add(name: String, value: String)
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
    var client: HTTPRequestHead
    var framing: BodyFraming
    var info: ForwardingInfo
    var removing: Set<String>

    /// The same head as an `HTTPRequestHead`.
    var head: HTTPRequestHead {
        HeaderRewriter.upstreamRequest(self.client, framing: self.framing, info: self.info, removing: self.removing)
    }

    /// Whether the body goes chunked (the rewrite adds `Transfer-Encoding: chunked` exactly then).
    var isChunked: Bool { self.framing == .chunked }

    /// Appends the head: request line, fields, empty line.
    func write(to buffer: inout ByteBuffer) {
        let start = buffer.writerIndex
        if !self.write(to: &buffer, named: nil) {
            // A `Connection` field names more fields to drop: written again knowing them.
            buffer.moveWriterIndex(to: start)
            _ = self.write(to: &buffer, named: HeaderRewriter.connectionTokens(self.client.headers) ?? [])
        }
    }

    private func write(to buffer: inout ByteBuffer, named: Set<String>?) -> Bool {
        let bound = self.sizeBound()
        return buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { raw in
            var sink = HeadBytesSink(raw.bindMemory(to: UInt8.self))
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
        var fields = 0
        // Indexed, not iterated: an iterator costs an allocation per element in a debug build,
        // which the allocation budget of `make test` would count.
        let headers = self.client.headers
        var index = headers.startIndex
        while index != headers.endIndex {
            let field = headers[index]
            fields += field.name.utf8.count + field.value.utf8.count + 4
            index = headers.index(after: index)
        }
        var added = 0
        for (name, value) in self.info.addedHeaders { added += name.utf8.count + value.utf8.count + 4 }
        let info = self.info
        let gatewayFields = info.fallbackHost.utf8.count + info.peer.utf8.count + info.scheme.utf8.count
            + (info.host?.utf8.count ?? 0) + info.requestID.utf8.count + TraceContext.headerValueLength
        // Names, separators and numbers of the added fields: well under 256 bytes.
        return self.client.method.rawValue.utf8.count + self.client.uri.utf8.count + 2 * fields + added + gatewayFields + 256
    }
}

/// What a `ProxyExchange` sends upstream as its head.
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

/// Writes fields as `name: value` CRLF into memory sized by `ForwardedRequestHead.sizeBound`.
private struct HeadBytesSink: UpstreamFieldSink {
    private let memory: UnsafeMutableBufferPointer<UInt8>
    private(set) var count = 0

    init(_ memory: UnsafeMutableBufferPointer<UInt8>) { self.memory = memory }

    /// The bound is computed, not assumed: a miscount must stop here, not write past the buffer.
    private func reserve(_ bytes: Int) {
        precondition(self.count + bytes <= self.memory.count, "upstream head larger than its bound")
    }

    mutating func copy(_ string: String) {
        var string = string
        string.withUTF8 { self.copy($0) }
    }

    mutating func copy(_ string: StaticString) {
        self.copy(UnsafeBufferPointer(start: string.utf8Start, count: string.utf8CodeUnitCount))
    }

    private mutating func copy(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.reserve(bytes.count)
        guard let base = bytes.baseAddress else { return }
        (self.memory.baseAddress! + self.count).update(from: base, count: bytes.count)
        self.count += bytes.count
    }

    mutating func add(name: String, value: String) {
        self.copy(name)
        self.copy(": ")
        self.copy(value)
        self.copy("\r\n")
    }

    mutating func addContentLength(_ length: Int) {
        self.copy("content-length: ")
        // Validated framing: never negative.
        var value = UInt(max(0, length))
        var digits = 1
        var probe = value
        while probe >= 10 {
            probe /= 10
            digits += 1
        }
        self.reserve(digits)
        var index = self.count + digits
        repeat {
            index -= 1
            self.memory[index] = UInt8(ascii: "0") + UInt8(value % 10)
            value /= 10
        } while value > 0
        self.count += digits
        self.copy("\r\n")
    }

    mutating func addTraceparent(_ trace: TraceContext) {
        self.copy("traceparent: ")
        self.reserve(TraceContext.headerValueLength)
        self.count += trace.writeHeaderValue(into: UnsafeMutableBufferPointer(rebasing: self.memory[self.count...]))
        self.copy("\r\n")
    }
}
