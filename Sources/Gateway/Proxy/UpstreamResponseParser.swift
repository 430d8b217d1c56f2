import NIOCore
import NIOHTTP1

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
        case head(UpstreamResponseHead, keepAlive: Bool)
        case body(ByteBuffer)
        case end
    }

    typealias Refusal = HTTP1Refusal

    private enum State {
        case head
        case body(HTTP1BodyReader)
        /// After a 101: the connection's bytes are the tunnelled protocol's, not HTTP.
        case switched
        case failed
    }

    static let defaultMaxHeadBytes = 80 * 1024

    let maxHeadBytes: Int
    private var state = State.head
    private var awaitingResponse = false
    private var requestIsBodyless = false
    private var switchesAfterThisResponse = false
    /// The head being read came short of its end: read end first until it is whole (see
    /// `HTTP1RequestParser`).
    private var headArrivesInPieces = false

    init(maxHeadBytes: Int = Self.defaultMaxHeadBytes) {
        self.maxHeadBytes = maxHeadBytes
    }

    /// A request was written: its response comes next. Responses to HEAD and CONNECT have no
    /// body, whatever their fields say.
    mutating func requestSent(method: HTTPMethod) {
        self.awaitingResponse = true
        self.requestIsBodyless = method.isHEAD || method.isCONNECT
    }

    /// After a 101 the rest of the bytes belong to the tunnel.
    var hasSwitched: Bool {
        if case .switched = self.state { return true }
        return false
    }

    /// The next event from `buffer`, consuming what it read; nil when more bytes are needed (the
    /// unread rest of `buffer` is the start of an unfinished head or line) or after a 101.
    mutating func next(_ buffer: inout ByteBuffer) throws(Refusal) -> Event? {
        while true {
            switch self.state {
            case .head:
                guard buffer.readableBytes > 0 else { return nil }
                guard self.awaitingResponse else { throw self.fail(.unsolicited) }
                guard let read = try self.readHead(&buffer) else { return nil }
                // Interim responses (1xx but 101) are dropped, as NIO's decoder does by default:
                // the final response follows. The head is moved out, not copied.
                if let parsed = consume read {
                    let keepAlive = parsed.keepAlive
                    return .head((consume parsed).head, keepAlive: keepAlive)
                }
            case .body(var reader):
                let event: HTTP1BodyReader.Event?
                do { event = try reader.next(&buffer) } catch { throw self.fail(error) }
                switch event {
                case .none:
                    self.state = .body(reader)
                    return nil
                case .body(let body):
                    self.state = .body(reader)
                    return .body(body)
                case .end:
                    self.awaitingResponse = false
                    self.state = self.switchesAfterThisResponse ? .switched : .head
                    return .end
                }
            case .switched:
                return nil
            case .failed:
                throw .malformed
            }
        }
    }

    /// The connection closed. A body delimited by the close ends here; a response cut short (or
    /// `bufferedBytes` of one that never completed) is refused.
    mutating func inputEnded(bufferedBytes: Int) throws(Refusal) -> Event? {
        switch self.state {
        case .body(let reader) where reader.endsWithClose:
            self.state = .head
            self.awaitingResponse = false
            return .end
        case .body:
            throw self.fail(.truncated)
        case .head:
            if bufferedBytes > 0 { throw self.fail(.truncated) }
            return nil
        case .switched, .failed:
            return nil
        }
    }

    private mutating func fail(_ refusal: Refusal) -> Refusal {
        self.state = .failed
        return refusal
    }

    /// Reads a whole head, or nothing if its end has not arrived. Returns `.some(nil)` for an
    /// interim response, which is dropped.
    private mutating func readHead(_ buffer: inout ByteBuffer) throws(Refusal) -> ParsedHead<UpstreamResponseHead>?? {
        let outcome = UpstreamResponseHead.parse(buffer, maxHeadBytes: self.maxHeadBytes, onePass: !self.headArrivesInPieces)
        let parsed: ParsedHead<UpstreamResponseHead>
        switch consume outcome {
        case .needMoreBytes:
            self.headArrivesInPieces = true
            return nil
        case .refused(let refusal): throw self.fail(refusal)
        case .parsed(let head): parsed = head
        }
        self.headArrivesInPieces = false
        buffer.moveReaderIndex(forwardBy: parsed.length)
        let status = parsed.head.status.code
        if status < 200 && status != 101 { return .some(nil) }
        self.switchesAfterThisResponse = status == 101
        if status == 101 || status == 204 || status == 304 || status < 200 || self.requestIsBodyless {
            self.state = .body(.none)
        } else if parsed.isChunked {
            self.state = .body(.chunked(maxTrailerBytes: self.maxHeadBytes))
        } else if let length = parsed.contentLength {
            self.state = .body(.length(length))
        } else {
            self.state = .body(.untilClose)
        }
        return .some(parsed)
    }
}

/// An upstream's response head as the strict grammar read it: the status line decoded, the field
/// lines kept as the upstream's bytes (a slice of the read buffer) for the rewrite to read in
/// place. `built` is NIO's `HTTPResponseHead`, for the paths that keep or edit the head (the
/// cache, a WebSocket switch).
struct UpstreamResponseHead {
    var version: HTTPVersion
    var status: HTTPResponseStatus
    /// As the parser kept them, or decoded (a head from a test).
    var fields: HeadFields
    /// The first `Content-Type` names `text/event-stream`: the response is a stream of events,
    /// watched for idleness. Found while the parser reads the fields, not by a second walk.
    var isEventStream: Bool

    init(version: HTTPVersion, status: HTTPResponseStatus, fields: HeadFields) {
        self.version = version
        self.status = status
        self.fields = fields
        self.isEventStream = fields.firstValue(of: "content-type", hasPrefix: "text/event-stream")
    }

    /// A head decoded elsewhere.
    init(_ head: HTTPResponseHead) {
        self.init(version: head.version, status: head.status, fields: HeadFields(head.headers))
    }

    var built: HTTPResponseHead {
        HTTPResponseHead(version: self.version, status: self.status, headers: self.fields.httpHeaders)
    }

    /// One response head in the strict grammar at the start of `buffer`: the status line, the
    /// fields, the empty line.
    /// `onePass` as in `StrictRequestHead.parse`.
    static func parse(_ buffer: ByteBuffer, maxHeadBytes: Int, onePass: Bool = true) -> HeadOutcome<UpstreamResponseHead> {
        let (outcome, fields, fieldCount) = buffer.withUnsafeReadableBytes { parse($0, maxHeadBytes: maxHeadBytes, onePass: onePass) }
        switch consume outcome {
        case .parsed(var parsed):
            let lines = buffer.getSlice(at: buffer.readerIndex + fields.lowerBound, length: fields.count)!
            parsed.head.fields = HeadFields(lines: FieldLines(validated: lines, count: fieldCount))
            return .parsed(parsed)
        case let other:
            return other
        }
    }

    /// The head's outcome, with its field lines' place in `bytes` (the head's fields are left
    /// empty for the caller, which holds the buffer, to slice).
    private static func parse(
        _ bytes: UnsafeRawBufferPointer, maxHeadBytes: Int, onePass: Bool
    ) -> (outcome: HeadOutcome<UpstreamResponseHead>, fields: Range<Int>, fieldCount: Int) {
        // The usual head, complete and in the grammar, in one pass.
        if onePass, let statusEnd = HTTP1Grammar.startLineEnd(bytes, maxHeadBytes: maxHeadBytes),
            let (version, status) = Self.statusLine(bytes, end: statusEnd),
            let (fields, headLength, lines) = HTTP1Grammar.readFieldsToEnd(
                bytes, from: statusEnd + 2, maxHeadBytes: maxHeadBytes, version: version
            )
        {
            return Self.parsed(version: version, status: status, fields: fields, statusEnd: statusEnd, headLength: headLength, lines: lines)
        }
        // Any other is read end first.
        let headLength: Int
        let lines: Int
        switch HTTP1Grammar.headEnd(bytes, maxHeadBytes: maxHeadBytes) {
        case .needMoreBytes:
            // Anything but the start of `HTTP/1.` is refused at once, not waited on.
            let prefix: StaticString = "HTTP/1."
            for index in 0..<min(bytes.count, prefix.utf8CodeUnitCount) where bytes[index] != prefix.utf8Start[index] {
                return (.refused(.malformed), 0..<0, 0)
            }
            return (.needMoreBytes, 0..<0, 0)
        case .refused(let refusal): return (.refused(refusal), 0..<0, 0)
        case .found(let length, let count): (headLength, lines) = (length, count)
        }
        let statusEnd = HTTP1Grammar.lineEnd(bytes, from: 0, to: headLength)
        guard let (version, status) = Self.statusLine(bytes, end: statusEnd),
            let fields = HTTP1Grammar.readFields(bytes, from: statusEnd + 2, headLength: headLength, version: version)
        else {
            return (.refused(.malformed), 0..<0, 0)
        }
        return Self.parsed(version: version, status: status, fields: fields, statusEnd: statusEnd, headLength: headLength, lines: lines)
    }

    /// The status line, ending at `end` (its CR): HTTP-version SP 3DIGIT [SP reason-phrase].
    private static func statusLine(_ bytes: UnsafeRawBufferPointer, end statusEnd: Int) -> (HTTPVersion, Int)? {
        guard statusEnd >= 12, bytes[0] == UInt8(ascii: "H"), bytes[1] == UInt8(ascii: "T"), bytes[2] == UInt8(ascii: "T"),
            bytes[3] == UInt8(ascii: "P"), bytes[4] == UInt8(ascii: "/"), bytes[5] == UInt8(ascii: "1"),
            bytes[6] == UInt8(ascii: "."), bytes[7] == UInt8(ascii: "1") || bytes[7] == UInt8(ascii: "0"),
            bytes[8] == UInt8(ascii: " ")
        else { return nil }
        let version: HTTPVersion = bytes[7] == UInt8(ascii: "1") ? .http1_1 : .http1_0
        var status = 0
        for index in 9..<12 {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            status = status * 10 + Int(digit)
        }
        guard (100...599).contains(status) else { return nil }
        if statusEnd > 12 {
            guard bytes[12] == UInt8(ascii: " ") else { return nil }
            var index = 13
            while index < statusEnd {
                guard HTTP1Grammar.isFieldValueByte(bytes[index]) else { return nil }
                index += 1
            }
        }
        return (version, status)
    }

    private static func parsed(
        version: HTTPVersion, status: Int, fields: HTTP1Grammar.Fields, statusEnd: Int, headLength: Int, lines: Int
    ) -> (outcome: HeadOutcome<UpstreamResponseHead>, fields: Range<Int>, fieldCount: Int) {
        // llhttp's rule, which NIO's decoder reports: HTTP/1.1 stays open unless told to close,
        // HTTP/1.0 only if told to keep alive, and never when the body ends with the connection
        // (decided from the fields and status alone, before the request's method is considered).
        let bodyless = status < 200 || status == 204 || status == 304
        let endsWithClose = !bodyless && !fields.isChunked && fields.contentLength == nil
        let keepAlive = (version == .http1_1 ? !fields.close : fields.keepAlive) && !endsWithClose
        var head = UpstreamResponseHead(version: version, status: HTTPResponseStatus(statusCode: status), fields: [:])
        head.isEventStream = fields.isEventStream
        let parsed = ParsedHead(head: head, length: headLength, contentLength: fields.contentLength, isChunked: fields.isChunked, keepAlive: keepAlive)
        return (.parsed(parsed), (statusEnd + 2)..<(headLength - 2), lines - 1)
    }
}
