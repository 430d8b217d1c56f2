import NIOCore
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An upstream's HTTP/1.1 responses, read straight from the socket's bytes in the strict RFC 9112
/// grammar, one event at a time.
///
/// It replaces NIO's llhttp response decoder on pooled upstream connections, where the gateway
/// also writes the requests and so knows each response's method without watching the writes go
/// by. What it accepts is a subset of what llhttp accepts (`UpstreamResponseDifferentialTests`
/// proves it on random and mutated framing vectors); anything else is refused, and the exchange
/// answers 502 as it does for a response llhttp refuses. The subset is everything a correct
/// origin sends: a status line, `name: value` fields, a body framed by one `Content-Length`, by
/// `Transfer-Encoding: chunked` alone (no chunk extensions), or by the connection's close.
///
/// Body bytes are slices of the read buffer (no copy). A head or chunk-size line split across
/// reads stays in the caller's buffer until the rest arrives.
struct UpstreamResponseParser {
    enum Event {
        /// `keepAlive`: the connection can carry another request after this response (false when
        /// the head says close, or the body ends with the connection).
        case head(HTTPResponseHead, keepAlive: Bool)
        case body(ByteBuffer)
        case end
    }

    /// Why a response was refused. The exchange answers 502 for all of them.
    enum Refusal: Error, Equatable {
        /// Outside the strict grammar, or framing fields that could be read two ways.
        case malformed
        /// The head is larger than `maxHeadBytes` (NIO's default, 80 KiB).
        case headTooLarge
        /// Bytes arrived while no request was waiting for a response.
        case unsolicited
        /// The connection closed in the middle of a response.
        case truncated
    }

    private enum State {
        case head
        case fixedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers(seen: Int)
        case untilClose
        /// A response ends without further bytes (a bodyless response, or the body is all in).
        case ending
        /// After a 101: the connection's bytes are the tunnelled protocol's, not HTTP.
        case switched
        case failed
    }

    static let defaultMaxHeadBytes = 80 * 1024
    /// A chunk-size line longer than this is refused (15 hex digits fit in an `Int`).
    private static let maxChunkSizeLine = 17

    let maxHeadBytes: Int
    private var state = State.head
    private var awaitingResponse = false
    private var requestIsBodyless = false
    private var switchesAfterThisResponse = false

    init(maxHeadBytes: Int = Self.defaultMaxHeadBytes) {
        self.maxHeadBytes = maxHeadBytes
    }

    /// A request was written: its response comes next. Responses to HEAD and CONNECT have no
    /// body, whatever their fields say.
    mutating func requestSent(method: HTTPMethod) {
        self.awaitingResponse = true
        self.requestIsBodyless = method == .HEAD || method == .CONNECT
    }

    /// After a 101 the rest of the bytes belong to the tunnel.
    var hasSwitched: Bool {
        if case .switched = self.state { return true }
        return false
    }

    /// Whether a response is under way (its head read, its end not yet).
    var isMidResponse: Bool {
        switch self.state {
        case .head, .switched, .failed: false
        case .fixedBody, .chunkSize, .chunkData, .chunkDataEnd, .trailers, .untilClose, .ending: true
        }
    }

    /// The next event from `buffer`, consuming what it read; nil when more bytes are needed (the
    /// unread rest of `buffer` is the start of an unfinished head or line) or after a 101.
    mutating func next(_ buffer: inout ByteBuffer) throws(Refusal) -> Event? {
        while true {
            switch self.state {
            case .head:
                guard buffer.readableBytes > 0 else { return nil }
                guard self.awaitingResponse else { throw self.fail(.unsolicited) }
                guard let head = try self.readHead(&buffer) else { return nil }
                // Interim responses (1xx but 101) are dropped, as NIO's decoder does by default:
                // the final response follows.
                if let head { return .head(head.head, keepAlive: head.keepAlive) }
            case .fixedBody(let remaining):
                guard let (body, left) = Self.readBody(&buffer, upTo: remaining) else { return nil }
                self.state = left == 0 ? .ending : .fixedBody(remaining: left)
                return .body(body)
            case .chunkSize:
                let size: Int?
            do { size = try self.readChunkSize(&buffer) } catch { throw self.fail(error) }
            guard let size else { return nil }
                self.state = size == 0 ? .trailers(seen: 0) : .chunkData(remaining: size)
            case .chunkData(let remaining):
                guard let (body, left) = Self.readBody(&buffer, upTo: remaining) else { return nil }
                self.state = left == 0 ? .chunkDataEnd : .chunkData(remaining: left)
                return .body(body)
            case .chunkDataEnd:
                guard buffer.readableBytes >= 2 else {
                    if buffer.readableBytes == 1, buffer.readableBytesView.first != UInt8(ascii: "\r") { throw self.fail(.malformed) }
                    return nil
                }
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw self.fail(.malformed) }
                self.state = .chunkSize
            case .trailers(let seen):
                guard try self.skipTrailerLine(&buffer, seen: seen) else { return nil }
            case .untilClose:
                guard buffer.readableBytes > 0 else { return nil }
                return .body(buffer.readSlice(length: buffer.readableBytes)!)
            case .ending:
                self.awaitingResponse = false
                self.state = self.switchesAfterThisResponse ? .switched : .head
                return .end
            case .switched:
                return nil
            case .failed:
                throw .malformed
            }
        }
    }

    /// Up to `remaining` body bytes as a slice of the read buffer, and how many are still to come.
    private static func readBody(_ buffer: inout ByteBuffer, upTo remaining: Int) -> (ByteBuffer, Int)? {
        guard buffer.readableBytes > 0 else { return nil }
        let count = min(remaining, buffer.readableBytes)
        return (buffer.readSlice(length: count)!, remaining - count)
    }

    /// The connection closed. A body delimited by the close ends here; a response cut short (or
    /// `bufferedBytes` of one that never completed) is refused.
    mutating func inputEnded(bufferedBytes: Int) throws(Refusal) -> Event? {
        switch self.state {
        case .untilClose:
            self.state = .head
            self.awaitingResponse = false
            return .end
        case .head:
            if bufferedBytes > 0 { throw self.fail(.truncated) }
            return nil
        case .switched, .failed:
            return nil
        case .fixedBody, .chunkSize, .chunkData, .chunkDataEnd, .trailers, .ending:
            throw self.fail(.truncated)
        }
    }

    private mutating func fail(_ refusal: Refusal) -> Refusal {
        self.state = .failed
        return refusal
    }

    // MARK: - Head

    /// Reads a whole head, or nothing if its end has not arrived. Returns `.some(nil)` for an
    /// interim response, which is dropped.
    private mutating func readHead(_ buffer: inout ByteBuffer) throws(Refusal) -> UpstreamResponseHead?? {
        let outcome = buffer.withUnsafeReadableBytes { bytes in
            UpstreamResponseHead.parse(bytes, maxHeadBytes: self.maxHeadBytes)
        }
        let parsed: UpstreamResponseHead
        switch outcome {
        case .needMoreBytes: return nil
        case .refused(let refusal): throw self.fail(refusal)
        case .parsed(let head): parsed = head
        }
        buffer.moveReaderIndex(forwardBy: parsed.length)
        let status = parsed.head.status.code
        if status < 200 && status != 101 { return .some(nil) }
        self.switchesAfterThisResponse = status == 101
        if status == 101 || status == 204 || status == 304 || status < 200 || self.requestIsBodyless {
            self.state = .ending
        } else if parsed.isChunked {
            self.state = .chunkSize
        } else if let length = parsed.contentLength {
            self.state = length == 0 ? .ending : .fixedBody(remaining: length)
        } else {
            self.state = .untilClose
        }
        return .some(parsed)
    }

    // MARK: - Chunked framing

    /// `1*HEXDIG CRLF`, without extensions or whitespace.
    private mutating func readChunkSize(_ buffer: inout ByteBuffer) throws(Refusal) -> Int? {
        var size = 0
        var lineLength = 0
        let complete = try buffer.withUnsafeReadableBytes { bytes throws(Refusal) -> Bool in
            for index in 0..<min(bytes.count, Self.maxChunkSizeLine) {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\r") {
                    guard index > 0 else { throw .malformed }
                    guard index + 1 < bytes.count else { return false }
                    guard bytes[index + 1] == UInt8(ascii: "\n") else { throw .malformed }
                    lineLength = index + 2
                    return true
                }
                guard let digit = hexValue(byte), index < 15 else { throw .malformed }
                size = size << 4 | digit
            }
            guard bytes.count < Self.maxChunkSizeLine else { throw .malformed }
            return false
        }
        guard complete else { return nil }
        buffer.moveReaderIndex(forwardBy: lineLength)
        return size
    }

    /// Reads one trailer field line (checked, then dropped, as the exchange never forwards
    /// trailers) or the empty line that ends the response.
    private mutating func skipTrailerLine(_ buffer: inout ByteBuffer, seen: Int) throws(Refusal) -> Bool {
        let outcome: Int?? = buffer.withUnsafeReadableBytes { bytes in
            guard let lf = byteIndex(of: UInt8(ascii: "\n"), in: bytes, from: 0, to: bytes.count) else { return nil }
            guard lf > 0, bytes[lf - 1] == UInt8(ascii: "\r") else { return .some(nil) }
            if lf == 1 { return .some(2) }
            let line = UnsafeRawBufferPointer(rebasing: bytes[0..<(lf - 1)])
            guard UpstreamResponseHead.fieldSplit(line) != nil else { return .some(nil) }
            return .some(lf + 1)
        }
        switch outcome {
        case .none:
            if seen + buffer.readableBytes > self.maxHeadBytes { throw self.fail(.headTooLarge) }
            return false
        case .some(.none): throw self.fail(.malformed)
        case .some(.some(let length)):
            buffer.moveReaderIndex(forwardBy: length)
            if length == 2 {
                self.state = .ending
            } else {
                guard seen + length <= self.maxHeadBytes else { throw self.fail(.headTooLarge) }
                self.state = .trailers(seen: seen + length)
            }
            return true
        }
    }
}

/// The first `byte` in `bytes[from..<to]` (memchr: no iterator, which a debug build would allocate).
@inline(__always)
private func byteIndex(of byte: UInt8, in bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
    guard from < to, let base = bytes.baseAddress else { return nil }
    guard let found = memchr(base + from, Int32(byte), to - from) else { return nil }
    return UnsafeRawPointer(found) - base
}

@inline(__always)
private func hexValue(_ byte: UInt8) -> Int? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte &- UInt8(ascii: "0"))
    case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte &- UInt8(ascii: "a") &+ 10)
    case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte &- UInt8(ascii: "A") &+ 10)
    default: nil
    }
}

/// One response head in the strict grammar: the status line, the fields, the empty line.
struct UpstreamResponseHead {
    var head: HTTPResponseHead
    /// Bytes from the status line to the empty line, both included.
    var length: Int
    var contentLength: Int?
    var isChunked: Bool
    /// The connection can carry another request after this response.
    var keepAlive: Bool

    enum Outcome {
        case parsed(UpstreamResponseHead)
        case needMoreBytes
        case refused(UpstreamResponseParser.Refusal)
    }

    static func parse(_ bytes: UnsafeRawBufferPointer, maxHeadBytes: Int) -> Outcome {
        // Find the empty line first: a head split across reads is not parsed again and again.
        let limit = min(bytes.count, maxHeadBytes)
        var lineStart = 0
        var lines = 0
        var headLength = -1
        while lineStart < limit {
            guard let lf = byteIndex(of: UInt8(ascii: "\n"), in: bytes, from: lineStart, to: limit) else { break }
            // Every line ends in CRLF: a bare LF is refused (llhttp reads it as a line end).
            guard lf > lineStart, bytes[lf - 1] == UInt8(ascii: "\r") else { return .refused(.malformed) }
            if lf == lineStart + 1 {
                headLength = lf + 1
                break
            }
            lines += 1
            lineStart = lf + 1
        }
        guard headLength > 0 else {
            return bytes.count >= maxHeadBytes ? .refused(.headTooLarge) : .needMoreBytes
        }
        guard lines > 0 else { return .refused(.malformed) }

        // The status line: HTTP-version SP 3DIGIT [SP reason-phrase].
        let statusEnd = byteIndex(of: UInt8(ascii: "\n"), in: bytes, from: 0, to: headLength)! - 1
        guard statusEnd >= 12, bytes[0] == UInt8(ascii: "H"), bytes[1] == UInt8(ascii: "T"), bytes[2] == UInt8(ascii: "T"),
            bytes[3] == UInt8(ascii: "P"), bytes[4] == UInt8(ascii: "/"), bytes[5] == UInt8(ascii: "1"),
            bytes[6] == UInt8(ascii: "."), bytes[7] == UInt8(ascii: "1") || bytes[7] == UInt8(ascii: "0"),
            bytes[8] == UInt8(ascii: " ")
        else { return .refused(.malformed) }
        let version: HTTPVersion = bytes[7] == UInt8(ascii: "1") ? .http1_1 : .http1_0
        var status = 0
        for index in 9..<12 {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return .refused(.malformed) }
            status = status * 10 + Int(digit)
        }
        guard (100...599).contains(status) else { return .refused(.malformed) }
        if statusEnd > 12 {
            guard bytes[12] == UInt8(ascii: " ") else { return .refused(.malformed) }
            var index = 13
            while index < statusEnd {
                guard isFieldValueByte(bytes[index]) else { return .refused(.malformed) }
                index += 1
            }
        }

        var headers = HTTPHeaders()
        headers.reserveCapacity(lines - 1)
        var contentLength: Int?
        var isChunked = false
        var sawTransferEncoding = false
        var connectionClose = false
        var connectionKeepAlive = false
        lineStart = statusEnd + 2
        while lineStart < headLength - 2 {
            // Ends at its LF's CR (checked above); a stray CR inside is refused as a control byte.
            let lineEnd = byteIndex(of: UInt8(ascii: "\n"), in: bytes, from: lineStart, to: headLength)! - 1
            let line = UnsafeRawBufferPointer(rebasing: bytes[lineStart..<lineEnd])
            guard let (name, value, trimmedEnd) = Self.fieldSplit(line) else { return .refused(.malformed) }
            let lineBytes = line.assumingMemoryBound(to: UInt8.self)
            let nameBytes = UnsafeBufferPointer(rebasing: lineBytes[name])
            let valueBytes = UnsafeBufferPointer(rebasing: lineBytes[value])
            let trimmedValue = UnsafeBufferPointer(rebasing: lineBytes[value.lowerBound..<trimmedEnd])
            if nameBytes.count == 10 && bytesEqualIgnoringASCIICase(nameBytes, "connection")
                || nameBytes.count == 16 && bytesEqualIgnoringASCIICase(nameBytes, "proxy-connection")
            {
                let options = Self.connectionOptions(trimmedValue)
                connectionClose = connectionClose || options.close
                connectionKeepAlive = connectionKeepAlive || options.keepAlive
            } else if nameBytes.count == 14, bytesEqualIgnoringASCIICase(nameBytes, "content-length") {
                // Untrimmed: llhttp does not read every OWS around a length or coding as RFC 9110
                // does ("chunked<HTAB>" is not chunked to it), and a framing field is never read
                // two ways.
                guard contentLength == nil, let length = Self.decimal(valueBytes) else { return .refused(.malformed) }
                contentLength = length
            } else if nameBytes.count == 17, bytesEqualIgnoringASCIICase(nameBytes, "transfer-encoding") {
                // Only a lone `chunked`: a list, another coding or a second field could be framed
                // differently by the next hop.
                guard !sawTransferEncoding, version == .http1_1, bytesEqualIgnoringASCIICase(valueBytes, "chunked") else {
                    return .refused(.malformed)
                }
                sawTransferEncoding = true
                isChunked = true
            }
            headers.add(name: String(decoding: nameBytes, as: UTF8.self), value: String(decoding: valueBytes, as: UTF8.self))
            lineStart = lineEnd + 2
        }
        // Both framings at once is the classic smuggling vector: refused, not resolved.
        if isChunked && contentLength != nil { return .refused(.malformed) }
        // llhttp's rule, which NIO's decoder reports: HTTP/1.1 stays open unless told to close,
        // HTTP/1.0 only if told to keep alive, and never when the body ends with the connection
        // (decided from the fields and status alone, before the request's method is considered).
        let bodyless = status < 200 || status == 204 || status == 304
        let endsWithClose = !bodyless && !isChunked && contentLength == nil
        let keepAlive = (version == .http1_1 ? !connectionClose : connectionKeepAlive) && !endsWithClose
        let head = HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: status), headers: headers)
        return .parsed(
            UpstreamResponseHead(head: head, length: headLength, contentLength: contentLength, isChunked: isChunked, keepAlive: keepAlive)
        )
    }

    /// `field-name ":" OWS field-value OWS`, or nil outside the grammar (no whitespace before the
    /// colon, no control bytes, no obs-fold). The value keeps its trailing whitespace, as llhttp
    /// gives it; `trimmedEnd` is where the value ends without it.
    static func fieldSplit(_ line: UnsafeRawBufferPointer) -> (name: Range<Int>, value: Range<Int>, trimmedEnd: Int)? {
        guard let colon = byteIndex(of: UInt8(ascii: ":"), in: line, from: 0, to: line.count), colon > 0 else { return nil }
        var index = 0
        while index < colon {
            guard isHTTPTokenByte(line[index]) else { return nil }
            index += 1
        }
        var start = colon + 1
        while start < line.count, line[start] == UInt8(ascii: " ") || line[start] == UInt8(ascii: "\t") { start += 1 }
        var trimmedEnd = line.count
        while trimmedEnd > start, line[trimmedEnd - 1] == UInt8(ascii: " ") || line[trimmedEnd - 1] == UInt8(ascii: "\t") { trimmedEnd -= 1 }
        index = start
        while index < trimmedEnd {
            guard isFieldValueByte(line[index]) else { return nil }
            index += 1
        }
        return (0..<colon, start..<line.count, trimmedEnd)
    }

    /// The `Connection` (or `Proxy-Connection`, which llhttp reads the same way) options that
    /// decide whether the connection stays open: comma-separated tokens, ASCII case ignored.
    private static func connectionOptions(_ value: UnsafeBufferPointer<UInt8>) -> (close: Bool, keepAlive: Bool) {
        var options = (close: false, keepAlive: false)
        _ = visitCommaSeparated(value) { token in
            if bytesEqualIgnoringASCIICase(token, "close") { options.close = true }
            if bytesEqualIgnoringASCIICase(token, "keep-alive") { options.keepAlive = true }
            return true
        }
        return options
    }

    /// `1*DIGIT`, at most 18 digits (an `Int` without overflow).
    private static func decimal(_ bytes: UnsafeBufferPointer<UInt8>) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 18 else { return nil }
        var value = 0
        for index in 0..<bytes.count {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            value = value * 10 + Int(digit)
        }
        return value
    }
}

/// RFC 9110 field-vchar, SP or HTAB: no control bytes, no DEL.
@inline(__always)
private func isFieldValueByte(_ byte: UInt8) -> Bool {
    byte == UInt8(ascii: "\t") || (byte >= 0x20 && byte != 0x7F)
}
