import NIOCore
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why an HTTP/1.1 message was refused by the gateway's own parsers (`HTTP1RequestParser`,
/// `UpstreamResponseParser`): a client gets 400 or 431, an upstream's response 502.
enum HTTP1Refusal: Error, Equatable {
    /// Outside the strict grammar, or framing fields that could be read two ways.
    case malformed
    /// The head is larger than the parser's limit.
    case headTooLarge
    /// Bytes arrived while no message was expected (a response nobody asked for).
    case unsolicited
    /// The connection closed in the middle of a message.
    case truncated
}

/// A head the strict grammar accepted, with how its body is framed.
struct ParsedHead<Head> {
    var head: Head
    /// Bytes from the start line to the empty line, both included.
    var length: Int
    var contentLength: Int?
    var isChunked: Bool
    /// The connection can carry another message after this one (llhttp's verdict: HTTP/1.1
    /// unless told to close, HTTP/1.0 only if told to keep alive).
    var keepAlive: Bool
    /// A request whose `Connection` lists `upgrade` with a non-empty `Upgrade` (a WebSocket
    /// handshake).
    var asksToSwitch = false
}

/// What a head parser made of the bytes so far.
enum HeadOutcome<Head> {
    case parsed(ParsedHead<Head>)
    case needMoreBytes
    case refused(HTTP1Refusal)
}

/// The pieces of RFC 9112's grammar both parsers share, on raw bytes. Scans use `memchr` and index
/// loops: a collection algorithm's iterator allocates per element in a debug build.
enum HTTP1Grammar {
    /// Where a head ends: the length up to and including its empty line, and its lines (the
    /// start line included) before it.
    enum HeadEnd {
        case found(length: Int, lines: Int)
        case needMoreBytes
        case refused(HTTP1Refusal)
    }

    /// Finds the empty line that ends the head starting at `bytes[0]`, refusing a bare LF.
    static func headEnd(_ bytes: UnsafeRawBufferPointer, maxHeadBytes: Int) -> HeadEnd {
        let limit = min(bytes.count, maxHeadBytes)
        var lineStart = 0
        var lines = 0
        while lineStart < limit {
            guard let lf = byteIndex(of: UInt8(ascii: "\n"), in: bytes, from: lineStart, to: limit) else { break }
            // Every line ends in CRLF: a bare LF is refused (llhttp reads it as a line end).
            guard lf > lineStart, bytes[lf - 1] == UInt8(ascii: "\r") else { return .refused(.malformed) }
            if lf == lineStart + 1 { return lines > 0 ? .found(length: lf + 1, lines: lines) : .refused(.malformed) }
            lines += 1
            lineStart = lf + 1
        }
        return bytes.count >= maxHeadBytes ? .refused(.headTooLarge) : .needMoreBytes
    }

    /// A head's field section, with what framing and connection handling need from it.
    struct Fields: Equatable {
        var contentLength: Int?
        var isChunked = false
        /// `Connection` (or `Proxy-Connection`, which llhttp reads the same way) options.
        var close = false
        var keepAlive = false
        var connectionUpgrade = false
        /// An `Upgrade` field with a non-empty value.
        var upgradeNamed = false
        /// The first `Content-Type` value starts with `text/event-stream` (ASCII case ignored).
        var isEventStream = false
        var sawContentType = false
    }

    /// Reads the field lines from `start` to the head's empty line (`headLength` bytes from the
    /// head's start, as `headEnd` found it): nil outside the strict grammar, or with framing fields
    /// that could be read two ways — a second or non-decimal `Content-Length`, a
    /// `Transfer-Encoding` other than one lone `chunked` (HTTP/1.1 only), or both. Framing values
    /// are taken untrimmed: llhttp does not read every OWS around a length or coding as RFC 9110
    /// does ("chunked<HTAB>" is not chunked to it).
    /// The caller keeps the lines' bytes (`FieldLines`).
    static func readFields(
        _ bytes: UnsafeRawBufferPointer, from start: Int, headLength: Int, version: HTTPVersion
    ) -> Fields? {
        var reader = FieldReader(version: version)
        var lineStart = start
        while lineStart < headLength - 2 {
            // Ends at its LF's CR (checked by `headEnd`); a stray CR inside is a control byte.
            let lineEnd = Self.lineEnd(bytes, from: lineStart, to: headLength)
            guard reader.read(UnsafeRawBufferPointer(rebasing: bytes[lineStart..<lineEnd])) else { return nil }
            lineStart = lineEnd + 2
        }
        return reader.fields
    }

    /// `headEnd` and then `readFields` in one pass over the bytes, for the usual head: complete
    /// within `maxHeadBytes`, every line ending in CRLF, every field in the grammar. Returns nil
    /// for any other (unfinished, a bare LF, a field `readFields` refuses), which the caller then
    /// reads as before, its end found first: what is refused or waited for does not change. The
    /// start line, ending at `start`, counts in `lines`, as in `headEnd`'s.
    static func readFieldsToEnd(
        _ bytes: UnsafeRawBufferPointer, from start: Int, maxHeadBytes: Int, version: HTTPVersion
    ) -> (fields: Fields, headLength: Int, lines: Int)? {
        let limit = min(bytes.count, maxHeadBytes)
        var reader = FieldReader(version: version)
        var lineStart = start
        var lines = 1
        while true {
            guard let lf = byteIndex(of: UInt8(ascii: "\n"), in: bytes, from: lineStart, to: limit),
                lf > lineStart, bytes[lf - 1] == UInt8(ascii: "\r")
            else { return nil }
            if lf == lineStart + 1 { return reader.fields.map { ($0, lf + 1, lines) } }
            guard reader.read(UnsafeRawBufferPointer(rebasing: bytes[lineStart..<(lf - 1)])) else { return nil }
            lines += 1
            lineStart = lf + 1
        }
    }

    /// The end (its CR) of a head's first line, when it is a non-empty line ending in CRLF
    /// within `maxHeadBytes`; nil otherwise (see `readFieldsToEnd`).
    static func startLineEnd(_ bytes: UnsafeRawBufferPointer, maxHeadBytes: Int) -> Int? {
        guard let lf = byteIndex(of: UInt8(ascii: "\n"), in: bytes, from: 0, to: min(bytes.count, maxHeadBytes)),
            lf > 1, bytes[lf - 1] == UInt8(ascii: "\r")
        else { return nil }
        return lf - 1
    }

    /// `readFields`' reading of one field line (without its CRLF).
    private struct FieldReader {
        let version: HTTPVersion
        private var read = Fields()
        private var sawTransferEncoding = false

        init(version: HTTPVersion) {
            self.version = version
        }

        /// What the lines said; nil when they frame the body both ways, the classic smuggling
        /// vector: refused, not resolved.
        var fields: Fields? {
            self.read.isChunked && self.read.contentLength != nil ? nil : self.read
        }

        /// False when the line is outside the grammar, or repeats or garbles a framing field.
        @inline(__always)
        mutating func read(_ line: UnsafeRawBufferPointer) -> Bool {
            guard let (name, value, trimmedEnd) = HTTP1Grammar.fieldSplit(line) else { return false }
            let lineBytes = line.assumingMemoryBound(to: UInt8.self)
            let nameBytes = UnsafeBufferPointer(rebasing: lineBytes[name])
            let valueBytes = UnsafeBufferPointer(rebasing: lineBytes[value])
            switch nameBytes.count {
            case 10 where tokenEqualsIgnoringASCIICase(nameBytes, "connection"),
                 16 where tokenEqualsIgnoringASCIICase(nameBytes, "proxy-connection"):
                let options = HTTP1Grammar.connectionOptions(UnsafeBufferPointer(rebasing: lineBytes[value.lowerBound..<trimmedEnd]))
                self.read.close = self.read.close || options.close
                self.read.keepAlive = self.read.keepAlive || options.keepAlive
                self.read.connectionUpgrade = self.read.connectionUpgrade || options.upgrade
            case 12 where !self.read.sawContentType && tokenEqualsIgnoringASCIICase(nameBytes, "content-type"):
                self.read.sawContentType = true
                self.read.isEventStream = bytesHavePrefixIgnoringASCIICase(valueBytes, "text/event-stream")
            case 7 where tokenEqualsIgnoringASCIICase(nameBytes, "upgrade"):
                self.read.upgradeNamed = self.read.upgradeNamed || value.lowerBound < trimmedEnd
            case 14 where tokenEqualsIgnoringASCIICase(nameBytes, "content-length"):
                guard self.read.contentLength == nil, let length = HTTP1Grammar.decimal(valueBytes) else { return false }
                self.read.contentLength = length
            case 17 where tokenEqualsIgnoringASCIICase(nameBytes, "transfer-encoding"):
                guard !self.sawTransferEncoding, self.version == .http1_1, bytesEqualIgnoringASCIICase(valueBytes, "chunked") else {
                    return false
                }
                self.sawTransferEncoding = true
                self.read.isChunked = true
            default:
                break
            }
            return true
        }
    }

    /// The end of the line starting at `start` in a head already delimited by `headEnd` (its CR).
    static func lineEnd(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Int {
        byteIndex(of: UInt8(ascii: "\n"), in: bytes, from: start, to: end)! - 1
    }

    /// `field-name ":" OWS field-value OWS`, or nil outside the grammar (no whitespace before the
    /// colon, no control bytes, no obs-fold). The value keeps its trailing whitespace, as llhttp
    /// gives it; `trimmedEnd` is where the value ends without it.
    static func fieldSplit(_ line: UnsafeRawBufferPointer) -> (name: Range<Int>, value: Range<Int>, trimmedEnd: Int)? {
        // The name is the run of token bytes; the byte after it must be the colon.
        var colon = 0
        while colon < line.count, isHTTPTokenByte(line[colon]) { colon += 1 }
        guard colon > 0, colon < line.count, line[colon] == UInt8(ascii: ":") else { return nil }
        var start = colon + 1
        while start < line.count, line[start] == UInt8(ascii: " ") || line[start] == UInt8(ascii: "\t") { start += 1 }
        var trimmedEnd = line.count
        while trimmedEnd > start, line[trimmedEnd - 1] == UInt8(ascii: " ") || line[trimmedEnd - 1] == UInt8(ascii: "\t") { trimmedEnd -= 1 }
        // Eight bytes at a time: values are most of a head's bytes.
        let value = UnsafeRawBufferPointer(rebasing: line[start..<trimmedEnd]).assumingMemoryBound(to: UInt8.self)
        guard RequestValidator.isFieldValue(bytes: value) else { return nil }
        return (0..<colon, start..<line.count, trimmedEnd)
    }

    /// `1*DIGIT`, at most 18 digits (an `Int` without overflow).
    static func decimal(_ bytes: UnsafeBufferPointer<UInt8>) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 18 else { return nil }
        var value = 0
        for index in 0..<bytes.count {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            value = value * 10 + Int(digit)
        }
        return value
    }

    /// The `Connection` (or `Proxy-Connection`, which llhttp reads the same way) options that
    /// decide whether the connection stays open: comma-separated tokens, ASCII case ignored.
    static func connectionOptions(_ value: UnsafeBufferPointer<UInt8>) -> (close: Bool, keepAlive: Bool, upgrade: Bool) {
        var options = (close: false, keepAlive: false, upgrade: false)
        _ = visitCommaSeparated(value) { token in
            if bytesEqualIgnoringASCIICase(token, "close") { options.close = true }
            if bytesEqualIgnoringASCIICase(token, "keep-alive") { options.keepAlive = true }
            if bytesEqualIgnoringASCIICase(token, "upgrade") { options.upgrade = true }
            return true
        }
        return options
    }

    /// The first `byte` in `bytes[from..<to]`.
    @inline(__always)
    static func byteIndex(of byte: UInt8, in bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
        guard from < to, let base = bytes.baseAddress else { return nil }
        guard let found = memchr(base + from, Int32(byte), to - from) else { return nil }
        return UnsafeRawPointer(found) - base
    }

    /// RFC 9110 field-vchar (obs-text included), SP or HTAB: no control bytes, no DEL.
    @inline(__always)
    static func isFieldValueByte(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: "\t") || (byte >= 0x20 && byte != 0x7F)
    }
}

/// A message body after its head: framed by a length, by chunks (RFC 9112 §7.1, without chunk
/// extensions; trailer fields checked, then dropped, as the gateway never forwards them) or by the
/// connection's close. Body bytes are slices of the read buffer.
struct HTTP1BodyReader {
    enum Event {
        case body(ByteBuffer)
        case end
    }

    private enum State {
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers(seen: Int)
        case untilClose
        case ended
    }

    /// A chunk-size line longer than this is refused (15 hex digits fit in an `Int`).
    private static let maxChunkSizeLine = 17

    private var state: State
    private let maxTrailerBytes: Int

    static func length(_ length: Int) -> HTTP1BodyReader { HTTP1BodyReader(length == 0 ? .ended : .fixed(remaining: length)) }
    static func chunked(maxTrailerBytes: Int) -> HTTP1BodyReader { HTTP1BodyReader(.chunkSize, maxTrailerBytes: maxTrailerBytes) }
    static let untilClose = HTTP1BodyReader(.untilClose)
    static let none = HTTP1BodyReader(.ended)

    private init(_ state: State, maxTrailerBytes: Int = 0) {
        self.state = state
        self.maxTrailerBytes = maxTrailerBytes
    }

    /// A body that ends only with the connection.
    var endsWithClose: Bool {
        if case .untilClose = self.state { return true }
        return false
    }

    /// The next body slice or the end; nil when more bytes are needed. After `.end` the caller
    /// moves on to the next message.
    mutating func next(_ buffer: inout ByteBuffer) throws(HTTP1Refusal) -> Event? {
        while true {
            switch self.state {
            case .fixed(let remaining):
                guard let (body, left) = Self.readSlice(&buffer, upTo: remaining) else { return nil }
                self.state = left == 0 ? .ended : .fixed(remaining: left)
                return .body(body)
            case .chunkSize:
                guard let size = try Self.readChunkSize(&buffer) else { return nil }
                self.state = size == 0 ? .trailers(seen: 0) : .chunkData(remaining: size)
            case .chunkData(let remaining):
                guard let (body, left) = Self.readSlice(&buffer, upTo: remaining) else { return nil }
                self.state = left == 0 ? .chunkDataEnd : .chunkData(remaining: left)
                return .body(body)
            case .chunkDataEnd:
                guard buffer.readableBytes >= 2 else {
                    if buffer.readableBytes == 1, buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) != UInt8(ascii: "\r") {
                        throw .malformed
                    }
                    return nil
                }
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw .malformed }
                self.state = .chunkSize
            case .trailers(let seen):
                guard let length = try Self.readTrailerLine(&buffer) else {
                    if seen + buffer.readableBytes > self.maxTrailerBytes { throw .headTooLarge }
                    return nil
                }
                if length == 2 {
                    self.state = .ended
                } else {
                    guard seen + length <= self.maxTrailerBytes else { throw .headTooLarge }
                    self.state = .trailers(seen: seen + length)
                }
            case .untilClose:
                guard buffer.readableBytes > 0 else { return nil }
                return .body(buffer.readSlice(length: buffer.readableBytes)!)
            case .ended:
                return .end
            }
        }
    }

    /// Up to `remaining` bytes, and how many are still to come.
    private static func readSlice(_ buffer: inout ByteBuffer, upTo remaining: Int) -> (ByteBuffer, Int)? {
        guard buffer.readableBytes > 0 else { return nil }
        let count = min(remaining, buffer.readableBytes)
        return (buffer.readSlice(length: count)!, remaining - count)
    }

    /// `1*HEXDIG CRLF`, without extensions or whitespace.
    private static func readChunkSize(_ buffer: inout ByteBuffer) throws(HTTP1Refusal) -> Int? {
        var size = 0
        var lineLength = 0
        let complete = try buffer.withUnsafeReadableBytes { bytes throws(HTTP1Refusal) -> Bool in
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

    /// Reads one trailer field line (checked, then dropped) or the empty line that ends the
    /// message; returns its length with the CRLF, nil when incomplete.
    private static func readTrailerLine(_ buffer: inout ByteBuffer) throws(HTTP1Refusal) -> Int? {
        let length = try buffer.withUnsafeReadableBytes { bytes throws(HTTP1Refusal) -> Int? in
            guard let lf = HTTP1Grammar.byteIndex(of: UInt8(ascii: "\n"), in: bytes, from: 0, to: bytes.count) else { return nil }
            guard lf > 0, bytes[lf - 1] == UInt8(ascii: "\r") else { throw .malformed }
            if lf == 1 { return 2 }
            guard HTTP1Grammar.fieldSplit(UnsafeRawBufferPointer(rebasing: bytes[0..<(lf - 1)])) != nil else { throw .malformed }
            return lf + 1
        }
        if let length { buffer.moveReaderIndex(forwardBy: length) }
        return length
    }
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
