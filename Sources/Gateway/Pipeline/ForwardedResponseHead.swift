import NIOCore
import NIOHTTP1

/// Where a rewrite (`HeaderRewriter.rewriteResponseFields`, `rewriteRequestFields`) puts its fields.
protocol HeadFieldSink {
    mutating func add(name: String, value: String)
    /// A field copied from a head's bytes.
    mutating func add(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>)
    /// A field the gateway names itself: `name` is a lowercase token, so a sink may copy it
    /// without checking it (the value is checked as any other).
    mutating func add(lowercaseName name: StaticString, value: String)
}

/// The response head for an HTTP/1.x client, kept as the upstream's head (its field lines as the
/// upstream's bytes) plus what the rewrite needs, and written straight into the client
/// connection's head buffer in one pass (no `String` per field, no `HTTPHeaders`). The rules are `HeaderRewriter.rewriteResponseFields`, the same that
/// `HeaderRewriter.clientResponse` applies to build an `HTTPResponseHead` (`built`, for HTTP/2
/// and the paths that edit the head further); a differential test holds the two to the same bytes.
struct ForwardedResponseHead {
    var upstream: UpstreamResponseHead
    var requestMethod: HTTPMethod
    var clientVersion: HTTPVersion
    var requestID: String
    var addHSTS: Bool
    var additions: ResponseAdditions

    /// The same head as an `HTTPResponseHead`, and its body's framing.
    var built: (HTTPResponseHead, HeaderRewriter.ResponseFraming) {
        HeaderRewriter.clientResponse(
            self.upstream.fields, status: self.upstream.status, requestMethod: self.requestMethod,
            clientVersion: self.clientVersion, requestID: self.requestID, addHSTS: self.addHSTS, additions: self.additions
        )
    }

    /// Appends the head (status line, fields, `Connection: close` when `close`, empty line) and
    /// returns the body's framing.
    func write(to buffer: inout ByteBuffer, close: Bool) -> HeaderRewriter.ResponseFraming {
        let start = buffer.writerIndex
        return HeaderRewriter.inOneOrTwoPasses(self.upstream.fields) { named in
            buffer.moveWriterIndex(to: start)
            return self.write(to: &buffer, close: close, named: named)
        }
    }

    private func write(to buffer: inout ByteBuffer, close: Bool, named: Set<String>?) -> HeaderRewriter.ResponseFraming? {
        var framing: HeaderRewriter.ResponseFraming?
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: self.sizeBound()) { raw in
            var sink = FieldBytesSink(raw.bindMemory(to: UInt8.self))
            sink.copy("HTTP/")
            sink.writeDecimal(UInt(self.clientVersion.major))
            sink.copy(".")
            sink.writeDecimal(UInt(self.clientVersion.minor))
            sink.copy(" ")
            sink.writeStatus(self.upstream.status)
            framing = HeaderRewriter.rewriteResponseFields(
                self.upstream.fields, status: self.upstream.status, requestMethod: self.requestMethod,
                clientVersion: self.clientVersion, requestID: self.requestID, addHSTS: self.addHSTS,
                additions: self.additions, named: named, into: &sink
            )
            guard framing != nil else { return 0 }
            if close { sink.add(name: "connection", value: "close") }
            sink.copy("\r\n")
            return sink.count
        }
        return framing
    }

    /// At least the head's size: every upstream field could be kept (and each `Vary` value appears
    /// again merged), plus every field the rewrite adds.
    private func sizeBound() -> Int {
        var size = 2 * self.upstream.fields.encodedSize
        for (name, value) in self.additions.headers { size += name.utf8.count + value.utf8.count + 4 }
        for (name, value) in self.additions.extraHeaders { size += name.utf8.count + value.utf8.count + 4 }
        // Status line, the request id, HSTS, `Transfer-Encoding`, `Vary: Origin`, `Connection: close`.
        return size + self.upstream.status.reasonPhrase.utf8.count + self.requestID.utf8.count + 256
    }
}

/// Writes a head into memory sized by the caller's bound: fields as `name: value` CRLF.
struct FieldBytesSink: HeadFieldSink {
    private let memory: UnsafeMutableBufferPointer<UInt8>
    private(set) var count = 0

    init(_ memory: UnsafeMutableBufferPointer<UInt8>) { self.memory = memory }

    /// The bound is computed, not assumed: a miscount must stop here, not write past the buffer.
    func reserve(_ bytes: Int) {
        precondition(self.count + bytes <= self.memory.count, "head larger than its bound")
    }

    mutating func copy(_ string: String) {
        string.withUTF8Bytes { self.copy($0) }
    }

    mutating func copy(_ string: StaticString) {
        self.copy(UnsafeBufferPointer(start: string.utf8Start, count: string.utf8CodeUnitCount))
    }

    mutating func copy(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.reserve(bytes.count)
        guard let base = bytes.baseAddress else { return }
        (self.memory.baseAddress! + self.count).update(from: base, count: bytes.count)
        self.count += bytes.count
    }

    mutating func add(name: String, value: String) {
        name.withUTF8Bytes { name in value.withUTF8Bytes { self.add(name: name, value: $0) } }
    }

    mutating func add(lowercaseName name: StaticString, value: String) {
        value.withUTF8Bytes { self.add(name: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount), value: $0) }
    }

    /// `name: value` CRLF, bounds checked once for the line: a head is a dozen of them.
    mutating func add(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        self.reserve(name.count + value.count + 4)
        let line = UnsafeMutableRawPointer(self.memory.baseAddress! + self.count)
        if let base = name.baseAddress { line.copyMemory(from: base, byteCount: name.count) }
        line.storeBytes(of: UInt16(bigEndian: 0x3A20), toByteOffset: name.count, as: UInt16.self)  // ": "
        if let base = value.baseAddress { (line + name.count + 2).copyMemory(from: base, byteCount: value.count) }
        line.storeBytes(of: UInt16(bigEndian: 0x0D0A), toByteOffset: name.count + 2 + value.count, as: UInt16.self)  // CRLF
        self.count += name.count + value.count + 4
    }

    /// `code SP reason-phrase CRLF`, as NIO's encoder writes a status.
    mutating func writeStatus(_ status: HTTPResponseStatus) {
        self.writeDecimal(UInt(status.code))
        self.copy(" ")
        self.copy(status.reasonPhrase)
        self.copy("\r\n")
    }

    mutating func writeDecimal(_ number: UInt) {
        var value = number
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
    }

    /// Lets a caller write bytes it sized itself (`reserve` first).
    mutating func advance(writing body: (UnsafeMutableBufferPointer<UInt8>) -> Int) {
        self.count += body(UnsafeMutableBufferPointer(rebasing: self.memory[self.count...]))
    }
}
