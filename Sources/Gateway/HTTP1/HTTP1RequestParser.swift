import NIOCore
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A client's HTTP/1.1 requests, read straight from the connection's bytes in the strict RFC 9112
/// grammar, one event at a time (`HTTP1ServerHandler` is its only user).
///
/// It replaces NIO's llhttp request decoder. What it accepts is a subset of what llhttp accepts
/// (`HTTP1RequestDifferentialTests` proves it on random and mutated smuggling vectors); anything
/// else is refused with 400 (431 for a head over `maxHeadBytes`), as a request llhttp refuses is.
/// The subset is what clients send: a known method, an origin-form target of visible ASCII,
/// `HTTP/1.1` or `HTTP/1.0`, `name: value` fields, a body framed by one `Content-Length` or by a
/// lone `Transfer-Encoding: chunked` (no chunk extensions). Empty lines before a request are
/// skipped, as llhttp does.
///
/// Body bytes are slices of the read buffer (no copy). A head or chunk-size line split across
/// reads stays in the caller's buffer until the rest arrives.
struct HTTP1RequestParser {
    enum Event {
        /// `keepAlive`: llhttp's verdict (HTTP/1.1 unless `Connection: close`, HTTP/1.0 only
        /// with `keep-alive`; `Proxy-Connection` counts as `Connection`). `asksToSwitch`: a
        /// `Connection` listing `upgrade` and a non-empty `Upgrade` (a WebSocket handshake).
        case head(RequestHead, keepAlive: Bool, asksToSwitch: Bool)
        case body(ByteBuffer)
        case end
    }

    private enum State {
        case head
        case body(HTTP1BodyReader, closesAfter: Bool)
        /// After a request that is not kept alive: llhttp refuses anything but empty lines.
        case closed
        case failed
    }

    /// Request line and fields, in bytes (`limits.max_header_bytes`); a longer head is refused
    /// with 431. Read when a head starts, so a reload applies to the next request.
    var maxHeadBytes: Int
    private var state = State.head
    /// Parsing waits (a WebSocket handshake awaits its 101): bytes stay with the caller.
    private(set) var isHeld = false
    /// The head being read came short of its end: it is read end first until it is whole, so a
    /// head arriving in many reads is not parsed again at each (`StrictRequestHead.parse`).
    private var headArrivesInPieces = false
    /// The last request's target text, reused while the next sends the same bytes.
    private var recentTarget = RecentText()

    init(maxHeadBytes: Int) {
        self.maxHeadBytes = maxHeadBytes
    }

    var hasFailed: Bool {
        if case .failed = self.state { return true }
        return false
    }

    /// Between requests: no byte of a next one read yet.
    var isBetweenRequests: Bool {
        if case .head = self.state { return true }
        return false
    }

    mutating func hold() { self.isHeld = true }
    mutating func resume() { self.isHeld = false }

    /// The next event from `buffer`, consuming what it read; nil when more bytes are needed (the
    /// unread rest of `buffer` is the start of an unfinished head or line) or while held.
    mutating func next(_ buffer: inout ByteBuffer) throws(HTTP1Refusal) -> Event? {
        guard !self.isHeld else { return nil }
        switch self.state {
        case .head:
            Self.skipEmptyLines(&buffer)
            guard buffer.readableBytes > 0 else { return nil }
            let outcome = StrictRequestHead.parse(
                buffer, maxHeadBytes: self.maxHeadBytes, onePass: !self.headArrivesInPieces, recentTarget: &self.recentTarget
            )
            // Consumed, and the head moved out: matching the borrowed outcome copied it.
            switch consume outcome {
            case .needMoreBytes:
                self.headArrivesInPieces = true
                return nil
            case .refused(let refusal):
                throw self.fail(refusal)
            case .parsed(let parsed):
                self.headArrivesInPieces = false
                buffer.moveReaderIndex(forwardBy: parsed.length)
                let reader: HTTP1BodyReader =
                    parsed.isChunked ? .chunked(maxTrailerBytes: self.maxHeadBytes) : .length(parsed.contentLength ?? 0)
                self.state = .body(reader, closesAfter: !parsed.keepAlive)
                let keepAlive = parsed.keepAlive, asksToSwitch = parsed.asksToSwitch
                return .head((consume parsed).head, keepAlive: keepAlive, asksToSwitch: asksToSwitch)
            }
        case .body(var reader, let closesAfter):
            let event: HTTP1BodyReader.Event?
            do { event = try reader.next(&buffer) } catch { throw self.fail(error) }
            switch event {
            case .none:
                self.state = .body(reader, closesAfter: closesAfter)
                return nil
            case .body(let body):
                self.state = .body(reader, closesAfter: closesAfter)
                return .body(body)
            case .end:
                self.state = closesAfter ? .closed : .head
                return .end
            }
        case .closed:
            Self.skipEmptyLines(&buffer)
            guard buffer.readableBytes == 0 else { throw self.fail(.malformed) }
            return nil
        case .failed:
            throw .malformed
        }
    }

    private mutating func fail(_ refusal: HTTP1Refusal) -> HTTP1Refusal {
        self.state = .failed
        return refusal
    }

    /// CRLF pairs before a request line (and a CR waiting for its LF).
    private static func skipEmptyLines(_ buffer: inout ByteBuffer) {
        while let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self), first == UInt8(ascii: "\r") {
            guard buffer.readableBytes >= 2 else { return }
            guard buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) == UInt8(ascii: "\n") else { return }
            buffer.moveReaderIndex(forwardBy: 2)
        }
    }
}

/// One decoded part of a client's request, as the connection queues and hands it on.
enum HTTP1RequestPart {
    /// `keepAlive`: the parser's verdict (`HTTP1RequestParser.Event.head`), which also decides
    /// whether it reads on after this request.
    case head(RequestHead, keepAlive: Bool)
    case body(ByteBuffer)
    case end
}

/// One request head in the strict grammar: the request line, the fields, the empty line.
enum StrictRequestHead {
    /// The head at the start of `buffer`. Its fields are a slice of `buffer` (no copy, no `String`
    /// per field): the head keeps the buffer's storage while it lives.
    /// - Parameter onePass: try the one-pass reading first (the usual, whole head); false for a
    ///   head known to be arriving in pieces, read end first (its end is looked for, not its
    ///   fields parsed, at each read).
    static func parse(_ buffer: ByteBuffer, maxHeadBytes: Int, onePass: Bool = true) -> HeadOutcome<RequestHead> {
        var targets = RecentText()
        return self.parse(buffer, maxHeadBytes: maxHeadBytes, onePass: onePass, recentTarget: &targets)
    }

    /// `parse`, the target's text reused from the connection's last request when the bytes match.
    static func parse(
        _ buffer: ByteBuffer, maxHeadBytes: Int, onePass: Bool, recentTarget: inout RecentText
    ) -> HeadOutcome<RequestHead> {
        let (outcome, fields, fieldCount) = buffer.withUnsafeReadableBytes {
            parse($0, maxHeadBytes: maxHeadBytes, onePass: onePass, recentTarget: &recentTarget)
        }
        switch consume outcome {
        case .parsed(var parsed):
            let lines = buffer.getSlice(at: buffer.readerIndex + fields.lowerBound, length: fields.count)!
            parsed.head.headers = HeadFields(lines: FieldLines(validated: lines, count: fieldCount))
            return .parsed(parsed)
        case let other:
            return other
        }
    }

    /// The head's outcome, with its field lines' place in `bytes` (the head's fields are left
    /// empty for the caller, which holds the buffer, to slice).
    private static func parse(
        _ bytes: UnsafeRawBufferPointer, maxHeadBytes: Int, onePass: Bool, recentTarget: inout RecentText
    ) -> (outcome: HeadOutcome<RequestHead>, fields: Range<Int>, fieldCount: Int) {
        // The usual head, complete and in the grammar, in one pass.
        if onePass, let lineEnd = HTTP1Grammar.startLineEnd(bytes, maxHeadBytes: maxHeadBytes),
            let line = Self.requestLine(bytes, end: lineEnd),
            let (fields, headLength, lines) = HTTP1Grammar.readFieldsToEnd(
                bytes, from: lineEnd + 2, maxHeadBytes: maxHeadBytes, version: line.version
            )
        {
            return Self.parsed(bytes, line: line, fields: fields, lineEnd: lineEnd, headLength: headLength, lines: lines, recentTarget: &recentTarget)
        }
        // Any other is read end first.
        let headLength: Int
        let lines: Int
        switch HTTP1Grammar.headEnd(bytes, maxHeadBytes: maxHeadBytes) {
        case .needMoreBytes: return (Self.couldStartRequest(bytes) ? .needMoreBytes : .refused(.malformed), 0..<0, 0)
        case .refused(let refusal): return (.refused(refusal), 0..<0, 0)
        case .found(let length, let count): (headLength, lines) = (length, count)
        }
        let lineEnd = HTTP1Grammar.lineEnd(bytes, from: 0, to: headLength)
        guard let line = Self.requestLine(bytes, end: lineEnd),
            let fields = HTTP1Grammar.readFields(bytes, from: lineEnd + 2, headLength: headLength, version: line.version)
        else {
            return (.refused(.malformed), 0..<0, 0)
        }
        return Self.parsed(bytes, line: line, fields: fields, lineEnd: lineEnd, headLength: headLength, lines: lines, recentTarget: &recentTarget)
    }

    /// The request line, ending at `end` (its CR): method SP origin-form SP HTTP-version.
    private static func requestLine(
        _ bytes: UnsafeRawBufferPointer, end lineEnd: Int
    ) -> (method: HTTPMethod, target: Range<Int>, version: HTTPVersion)? {
        guard let methodEnd = HTTP1Grammar.byteIndex(of: UInt8(ascii: " "), in: bytes, from: 0, to: lineEnd),
            let method = Self.method(UnsafeRawBufferPointer(rebasing: bytes[0..<methodEnd]))
        else { return nil }
        let targetStart = methodEnd + 1
        guard targetStart < lineEnd, bytes[targetStart] == UInt8(ascii: "/") else { return nil }
        var index = targetStart + 1
        while index < lineEnd, bytes[index] != UInt8(ascii: " ") {
            // Visible ASCII only: no control bytes, no obs-text (clients percent-encode).
            guard bytes[index] > 0x20, bytes[index] < 0x7F else { return nil }
            index += 1
        }
        let targetEnd = index
        guard lineEnd - targetEnd == 9, bytes[targetEnd + 1] == UInt8(ascii: "H"), bytes[targetEnd + 2] == UInt8(ascii: "T"),
            bytes[targetEnd + 3] == UInt8(ascii: "T"), bytes[targetEnd + 4] == UInt8(ascii: "P"),
            bytes[targetEnd + 5] == UInt8(ascii: "/"), bytes[targetEnd + 6] == UInt8(ascii: "1"),
            bytes[targetEnd + 7] == UInt8(ascii: "."),
            bytes[targetEnd + 8] == UInt8(ascii: "1") || bytes[targetEnd + 8] == UInt8(ascii: "0")
        else { return nil }
        return (method, targetStart..<targetEnd, bytes[targetEnd + 8] == UInt8(ascii: "1") ? .http1_1 : .http1_0)
    }

    private static func parsed(
        _ bytes: UnsafeRawBufferPointer, line: (method: HTTPMethod, target: Range<Int>, version: HTTPVersion),
        fields: HTTP1Grammar.Fields, lineEnd: Int, headLength: Int, lines: Int, recentTarget: inout RecentText
    ) -> (outcome: HeadOutcome<RequestHead>, fields: Range<Int>, fieldCount: Int) {
        let target = recentTarget.text(for: UnsafeRawBufferPointer(rebasing: bytes[line.target]))
        let head = RequestHead(version: line.version, method: line.method, uri: target, headers: [:])
        let parsed = HeadOutcome.parsed(
            ParsedHead(
                head: head, length: headLength, contentLength: fields.contentLength, isChunked: fields.isChunked,
                keepAlive: line.version == .http1_1 ? !fields.close : fields.keepAlive,
                asksToSwitch: fields.connectionUpgrade && fields.upgradeNamed
            )
        )
        return (parsed, (lineEnd + 2)..<(headLength - 2), lines - 1)
    }

    /// Whether an unfinished head begins as a request line can (`METHOD /`): junk is refused at
    /// once, as llhttp does, rather than waiting for a line end that may never come.
    private static func couldStartRequest(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var index = 0
        while index < bytes.count, bytes[index] != UInt8(ascii: " ") {
            guard bytes[index] &- UInt8(ascii: "A") < 26, index < 7 else { return false }
            index += 1
        }
        return index + 1 >= bytes.count || bytes[index + 1] == UInt8(ascii: "/")
    }

    /// The methods clients send (all of them llhttp's too); any other is refused. CONNECT's target
    /// is no origin-form: llhttp reads it.
    private static func method(_ bytes: UnsafeRawBufferPointer) -> HTTPMethod? {
        guard let method = HTTPMethod(commonMethodBytes: bytes), !method.isCONNECT else { return nil }
        return method
    }
}
