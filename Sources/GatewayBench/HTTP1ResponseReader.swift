import NIOCore

/// Why a response could not be read: the connection is closed and its request counts as `reset`.
struct HTTP1ResponseError: Error, Equatable, CustomStringConvertible {
    var description: String
}

/// Reads the load generator's HTTP/1.1 responses straight from the connection's bytes: the status,
/// whether the connection stays open, and where the message ends (RFC 9112 §6.3), nothing else.
/// The bench needs no header values, so it builds none: NIO's llhttp decoder and `HTTPHeaders`
/// cost the client more CPU per request than the server under test spends on its whole exchange,
/// and on a shared load core that cost becomes everybody's latency.
///
/// One request is in flight at a time (the connection does not pipeline); `expect(head:)` says
/// whether it was a HEAD, whose response has no body whatever its framing fields say.
struct HTTP1ResponseReader {
    /// A complete response.
    struct Response: Equatable {
        var status: Int
        var keepAlive: Bool
    }

    private enum State: Equatable {
        case idle
        case head
        case fixedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case untilClose
    }

    /// The longest status line plus fields accepted (nginx's large_client_header_buffers is 32 KiB).
    static let maximumHeadBytes = 64 * 1024

    private var state = State.idle
    private var headRequest = false
    private var status = 0
    private var keepAlive = true
    /// Bytes of an unfinished head or chunk-size line, kept across reads.
    private var partial: ByteBuffer?

    /// A request was sent: its response comes next.
    mutating func expect(head: Bool) {
        self.state = .head
        self.headRequest = head
        self.partial = nil
    }

    /// Consumes `buffer`; returns the response once its last byte has been read. Bytes that arrive
    /// while no request is in flight are an error: a server answered something never asked.
    mutating func read(_ buffer: inout ByteBuffer) throws(HTTP1ResponseError) -> Response? {
        if var partial = self.partial {
            self.partial = nil
            partial.writeBuffer(&buffer)
            buffer = partial
        }
        while buffer.readableBytes > 0 {
            switch self.state {
            case .idle:
                throw HTTP1ResponseError(description: "\(buffer.readableBytes) bytes received with no request in flight")
            case .head:
                guard let end = Self.headEnd(in: buffer) else {
                    try self.keepPartial(buffer, limit: Self.maximumHeadBytes, what: "response head")
                    buffer.moveReaderIndex(to: buffer.writerIndex)
                    return nil
                }
                let done = try self.parseHead(buffer.readableBytesView.prefix(end))
                buffer.moveReaderIndex(forwardBy: end + 4)
                if done { return self.finish() }
            case .fixedBody(let remaining):
                let taken = min(remaining, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: taken)
                if taken == remaining { return self.finish() }
                self.state = .fixedBody(remaining: remaining - taken)
            case .chunkSize:
                guard let line = Self.lineEnd(in: buffer) else {
                    try self.keepPartial(buffer, limit: 1024, what: "chunk-size line")
                    buffer.moveReaderIndex(to: buffer.writerIndex)
                    return nil
                }
                let size = try Self.chunkSize(buffer.readableBytesView.prefix(line))
                buffer.moveReaderIndex(forwardBy: line + 2)
                self.state = size == 0 ? .trailers : .chunkData(remaining: size)
            case .chunkData(let remaining):
                let taken = min(remaining, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: taken)
                self.state = taken == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - taken)
            case .chunkDataEnd:
                guard buffer.readableBytes >= 2 else {
                    try self.keepPartial(buffer, limit: 2, what: "chunk end")
                    buffer.moveReaderIndex(to: buffer.writerIndex)
                    return nil
                }
                guard buffer.readableBytesView.prefix(2).elementsEqual([13, 10]) else {
                    throw HTTP1ResponseError(description: "chunk data not followed by CRLF")
                }
                buffer.moveReaderIndex(forwardBy: 2)
                self.state = .chunkSize
            case .trailers:
                guard let line = Self.lineEnd(in: buffer) else {
                    try self.keepPartial(buffer, limit: Self.maximumHeadBytes, what: "trailer section")
                    buffer.moveReaderIndex(to: buffer.writerIndex)
                    return nil
                }
                buffer.moveReaderIndex(forwardBy: line + 2)
                if line == 0 { return self.finish() }
            case .untilClose:
                buffer.moveReaderIndex(to: buffer.writerIndex)
            }
        }
        return nil
    }

    /// The connection closed: a body delimited by the close is complete; anything else was cut off.
    mutating func endOfInput() -> Response? {
        guard self.state == .untilClose else { return nil }
        self.state = .idle
        return Response(status: self.status, keepAlive: false)
    }

    private mutating func finish() -> Response {
        self.state = .idle
        return Response(status: self.status, keepAlive: self.keepAlive)
    }

    private mutating func keepPartial(_ buffer: ByteBuffer, limit: Int, what: String) throws(HTTP1ResponseError) {
        guard buffer.readableBytes <= limit else {
            throw HTTP1ResponseError(description: "\(what) longer than \(limit) bytes")
        }
        var kept = ByteBufferAllocator().buffer(capacity: max(buffer.readableBytes * 2, 256))
        kept.writeImmutableBuffer(buffer)
        self.partial = kept
    }

    /// Parses the status line and fields (without the final CRLF CRLF); true when the message has
    /// no body and is complete.
    private mutating func parseHead(_ head: ByteBufferView) throws(HTTP1ResponseError) -> Bool {
        var lines = Self.Lines(head)
        guard let statusLine = lines.next() else { throw HTTP1ResponseError(description: "empty response head") }
        // HTTP-version SP 3DIGIT SP [reason] (RFC 9112 §4); the reason may be empty.
        let prefix = Array("HTTP/1.".utf8)
        guard statusLine.count >= 12, statusLine.prefix(7).elementsEqual(prefix),
              let minor = statusLine.dropFirst(7).first, minor == UInt8(ascii: "0") || minor == UInt8(ascii: "1"),
              statusLine[statusLine.startIndex + 8] == UInt8(ascii: " "),
              statusLine.count == 12 || statusLine[statusLine.startIndex + 12] == UInt8(ascii: " ")
        else { throw HTTP1ResponseError(description: "malformed status line") }
        var status = 0
        for digit in statusLine[(statusLine.startIndex + 9)..<(statusLine.startIndex + 12)] {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else {
                throw HTTP1ResponseError(description: "malformed status code")
            }
            status = status * 10 + Int(digit - UInt8(ascii: "0"))
        }
        guard status >= 100 else { throw HTTP1ResponseError(description: "status \(status) out of range") }

        var contentLength: Int?
        var chunked = false
        var close = minor == UInt8(ascii: "0")
        while let line = lines.next() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon != line.startIndex else {
                throw HTTP1ResponseError(description: "malformed header field")
            }
            let name = line[..<colon]
            let value = Self.trimmed(line[line.index(after: colon)...])
            if Self.equalsIgnoringCase(name, "content-length") {
                guard let length = Self.decimal(value) else { throw HTTP1ResponseError(description: "invalid content-length") }
                if let contentLength, contentLength != length { throw HTTP1ResponseError(description: "conflicting content-length fields") }
                contentLength = length
            } else if Self.equalsIgnoringCase(name, "transfer-encoding") {
                // The last coding decides (RFC 9112 §6.3): anything but chunked is read to the close.
                let last = Self.trimmed(value.split(separator: UInt8(ascii: ",")).last ?? value[...])
                chunked = Self.equalsIgnoringCase(last, "chunked")
                if !chunked { close = true }
            } else if Self.equalsIgnoringCase(name, "connection") {
                for token in value.split(separator: UInt8(ascii: ",")) {
                    let token = Self.trimmed(token)
                    if Self.equalsIgnoringCase(token, "close") { close = true }
                    if Self.equalsIgnoringCase(token, "keep-alive") && minor == UInt8(ascii: "0") { close = false }
                }
            }
        }

        if (100..<200).contains(status) {
            guard status != 101 else { throw HTTP1ResponseError(description: "unexpected 101 Switching Protocols") }
            return false  // interim response: the final one follows on the same request
        }
        self.status = status
        self.keepAlive = !close
        if self.headRequest || status == 204 || status == 304 { return true }
        if chunked {
            self.state = .chunkSize
        } else if let contentLength {
            if contentLength == 0 { return true }
            self.state = .fixedBody(remaining: contentLength)
        } else {
            self.state = .untilClose
            self.keepAlive = false
        }
        return false
    }

    // MARK: Bytes

    /// The offset of CRLF CRLF in the readable bytes.
    private static func headEnd(in buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            guard bytes.count >= 4 else { return nil }
            var index = 0
            while index + 3 < bytes.count {
                if bytes[index + 3] != 10 {
                    index += bytes[index + 3] == 13 ? 1 : 4
                    continue
                }
                if bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 { return index }
                index += 1
            }
            return nil
        }
    }

    /// The offset of the first CRLF in the readable bytes.
    private static func lineEnd(in buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            guard bytes.count >= 2 else { return nil }
            for index in 0..<(bytes.count - 1) where bytes[index] == 13 && bytes[index + 1] == 10 { return index }
            return nil
        }
    }

    private static func chunkSize(_ line: ByteBufferView) throws(HTTP1ResponseError) -> Int {
        var size = 0
        var digits = 0
        for byte in line {
            let value: Int
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = Int(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = Int(byte - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = Int(byte - UInt8(ascii: "A")) + 10
            case UInt8(ascii: ";"), UInt8(ascii: " "), UInt8(ascii: "\t"):
                guard digits > 0 else { throw HTTP1ResponseError(description: "malformed chunk size") }
                return size  // chunk extensions are ignored (RFC 9112 §7.1.1)
            default: throw HTTP1ResponseError(description: "malformed chunk size")
            }
            digits += 1
            guard digits <= 15 else { throw HTTP1ResponseError(description: "chunk size too large") }
            size = size * 16 + value
        }
        guard digits > 0 else { throw HTTP1ResponseError(description: "malformed chunk size") }
        return size
    }

    private static func decimal(_ bytes: ByteBufferView.SubSequence) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 18 else { return nil }
        var value = 0
        for byte in bytes {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value
    }

    private static func trimmed(_ bytes: ByteBufferView.SubSequence) -> ByteBufferView.SubSequence {
        var bytes = bytes
        while let first = bytes.first, first == 32 || first == 9 { bytes = bytes.dropFirst() }
        while let last = bytes.last, last == 32 || last == 9 { bytes = bytes.dropLast() }
        return bytes
    }

    private static func equalsIgnoringCase(_ bytes: ByteBufferView.SubSequence, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        return lowercase.withUTF8Buffer { expected in
            zip(bytes, expected).allSatisfy { byte, wanted in
                (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte | 0x20 == wanted : byte == wanted
            }
        }
    }

    /// The CRLF-separated lines of a head (a bare LF stays inside its line: the bench is no validator).
    private struct Lines {
        private var rest: ByteBufferView.SubSequence

        init(_ head: ByteBufferView) { self.rest = head[...] }

        mutating func next() -> ByteBufferView.SubSequence? {
            guard !self.rest.isEmpty else { return nil }
            var index = self.rest.startIndex
            while index < self.rest.endIndex {
                if self.rest[index] == 13, self.rest.index(after: index) < self.rest.endIndex,
                   self.rest[self.rest.index(after: index)] == 10 {
                    let line = self.rest[..<index]
                    self.rest = self.rest[self.rest.index(index, offsetBy: 2)...]
                    return line
                }
                index = self.rest.index(after: index)
            }
            let line = self.rest
            self.rest = self.rest[self.rest.endIndex...]
            return line
        }
    }
}
