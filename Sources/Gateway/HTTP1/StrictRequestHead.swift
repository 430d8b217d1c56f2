import NIOHTTP1

/// A request head in the narrowest shape of RFC 9112 that ordinary clients send, parsed in place:
/// the request line and each field as offsets into the bytes read. Anything outside that shape is
/// not judged here but left, byte for byte, to llhttp (`GatewayRequestDecoder`), so this parser can
/// only ever accept a subset of what llhttp accepts (`StrictHeadDifferentialTests` checks it):
///
/// - method: `GET HEAD POST PUT DELETE OPTIONS PATCH`; CONNECT and everything else falls back;
/// - target: origin-form (`/` then unreserved, sub-delims, `: @ / ? %`); `*`, absolute and
///   authority forms fall back;
/// - version: `HTTP/1.1` or `HTTP/1.0`; single spaces, CRLF line ends only (no leading empty
///   line, no bare LF, no obs-fold);
/// - fields: a token name directly followed by `:`, a value of visible ASCII, SP and HTAB
///   (leading SP/HTAB skipped, trailing kept, as llhttp does); no NUL, no obs-text;
/// - framing: no `Transfer-Encoding` at all, at most one `Content-Length` of 1–18 digits;
/// - no `Upgrade` field (llhttp stops parsing after a protocol switch; the gateway relies on it),
///   no `Proxy-Connection`, at most one `Connection` field, of exactly `close` or `keep-alive`
///   (llhttp's other special fields are `Content-Length` and `Transfer-Encoding`, above);
/// - the whole head within `maxHeadBytes` and `maxFields`.
enum StrictRequestHead {
    /// One field line: `name` and `value` as offsets from the head's first byte.
    struct Field: Equatable {
        var nameStart: Int
        var nameEnd: Int
        var valueStart: Int
        var valueEnd: Int
    }

    /// A head accepted by the strict grammar.
    struct Parsed: Equatable {
        var method: HTTPMethod
        var targetStart: Int
        var targetEnd: Int
        var version: HTTPVersion
        /// Bytes from the first byte of the request line through the blank line.
        var headLength: Int
        /// The body length (0 without a `Content-Length` field).
        var contentLength: Int
        /// llhttp's keep-alive verdict: after a request that is not kept alive, llhttp refuses any
        /// further byte but CR and LF.
        var keepAlive: Bool
    }

    enum Outcome: Equatable {
        case parsed(Parsed)
        /// A strict head so far, not complete yet.
        case needMoreBytes
        /// Outside the strict grammar (or over its limits): llhttp decides.
        case notStrict
    }

    /// More fields than this fall back (llhttp's own limit is far above it).
    static let maxFields = 256

    /// Parses the head at the start of `bytes`, filling `fields` (emptied first; its capacity is
    /// kept between requests by the caller).
    static func parse(_ bytes: UnsafeRawBufferPointer, maxHeadBytes: Int, fields: inout [Field]) -> Outcome {
        fields.removeAll(keepingCapacity: true)
        let end = bytes.count
        // Past the limit with the head still open, or a complete head over it: llhttp decides.
        let limit = min(end, maxHeadBytes)
        var index = 0

        // Method, then exactly one SP.
        while index < limit, bytes[index] != UInt8(ascii: " ") {
            guard bytes[index] &- UInt8(ascii: "A") < 26, index < 7 else { return .notStrict }
            index += 1
        }
        guard index < limit else { return Self.incomplete(end: end, maxHeadBytes: maxHeadBytes) }
        guard let method = Self.method(bytes, length: index) else { return .notStrict }
        index += 1

        // Origin-form target, then exactly one SP.
        let targetStart = index
        guard index < limit else { return Self.incomplete(end: end, maxHeadBytes: maxHeadBytes) }
        guard bytes[index] == UInt8(ascii: "/") else { return .notStrict }
        index += 1
        while index < limit, bytes[index] != UInt8(ascii: " ") {
            guard Self.isTargetByte(bytes[index]) else { return .notStrict }
            index += 1
        }
        guard index < limit else { return Self.incomplete(end: end, maxHeadBytes: maxHeadBytes) }
        let targetEnd = index
        index += 1

        // "HTTP/1.x" CRLF.
        let versionPrefix: StaticString = "HTTP/1."
        var matched = 0
        while matched < versionPrefix.utf8CodeUnitCount {
            guard index < limit else { return Self.incomplete(end: end, maxHeadBytes: maxHeadBytes) }
            guard bytes[index] == versionPrefix.utf8Start[matched] else { return .notStrict }
            index += 1
            matched += 1
        }
        guard index < limit else { return Self.incomplete(end: end, maxHeadBytes: maxHeadBytes) }
        let version: HTTPVersion
        switch bytes[index] {
        case UInt8(ascii: "1"): version = .http1_1
        case UInt8(ascii: "0"): version = .http1_0
        default: return .notStrict
        }
        index += 1
        switch Self.lineEnd(bytes, at: index, limit: limit) {
        case .crlf: index += 2
        case .incomplete: return Self.incomplete(end: end, maxHeadBytes: maxHeadBytes)
        case .other: return .notStrict
        }

        // Field lines until the empty line.
        var contentLength: Int? = nil
        var connection: ConnectionOption? = nil
        while true {
            guard index < limit else { return Self.incomplete(end: end, maxHeadBytes: maxHeadBytes) }
            if bytes[index] == UInt8(ascii: "\r") {
                switch Self.lineEnd(bytes, at: index, limit: limit) {
                case .crlf:
                    let parsed = Parsed(
                        method: method, targetStart: targetStart, targetEnd: targetEnd, version: version,
                        headLength: index + 2, contentLength: contentLength ?? 0,
                        keepAlive: version == .http1_1 ? connection != .close : connection == .keepAlive
                    )
                    return .parsed(parsed)
                case .incomplete: return Self.incomplete(end: end, maxHeadBytes: maxHeadBytes)
                case .other: return .notStrict
                }
            }
            guard fields.count < Self.maxFields else { return .notStrict }
            let nameStart = index
            while index < limit, bytes[index] != UInt8(ascii: ":") {
                guard isHTTPTokenByte(bytes[index]) else { return .notStrict }
                index += 1
            }
            guard index < limit else { return Self.incomplete(end: end, maxHeadBytes: maxHeadBytes) }
            let nameEnd = index
            guard nameEnd > nameStart else { return .notStrict }
            index += 1
            while index < limit, bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\t") { index += 1 }
            let valueStart = index
            while index < limit, bytes[index] != UInt8(ascii: "\r") {
                let byte = bytes[index]
                guard (byte >= 0x20 && byte <= 0x7E) || byte == UInt8(ascii: "\t") else { return .notStrict }
                index += 1
            }
            // Trailing SP/HTAB stays in the value, as llhttp hands it over.
            let valueEnd = index
            switch Self.lineEnd(bytes, at: index, limit: limit) {
            case .crlf: index += 2
            case .incomplete: return Self.incomplete(end: end, maxHeadBytes: maxHeadBytes)
            case .other: return .notStrict
            }
            let field = Field(nameStart: nameStart, nameEnd: nameEnd, valueStart: valueStart, valueEnd: valueEnd)
            switch nameEnd - nameStart {
            case 7 where Self.nameEquals(bytes, field, "upgrade"):
                return .notStrict
            case 10 where Self.nameEquals(bytes, field, "connection"):
                // One `Connection` field of one option: lists are llhttp's to read.
                guard connection == nil, let option = Self.connectionOption(bytes, from: valueStart, to: valueEnd) else {
                    return .notStrict
                }
                connection = option
            case 14 where Self.nameEquals(bytes, field, "content-length"):
                guard contentLength == nil, let length = Self.decimal(bytes, from: valueStart, to: valueEnd) else {
                    return .notStrict
                }
                contentLength = length
            case 16 where Self.nameEquals(bytes, field, "proxy-connection"):
                // llhttp reads it as `Connection` (keep-alive, close, upgrade).
                return .notStrict
            case 17 where Self.nameEquals(bytes, field, "transfer-encoding"):
                return .notStrict
            default:
                break
            }
            fields.append(field)
        }
    }

    /// Builds NIO's head from a parsed one (the types the request path works on).
    static func makeHead(_ parsed: Parsed, fields: [Field], bytes: UnsafeRawBufferPointer) -> HTTPRequestHead {
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(fields.count)
        // Indexed, not iterated: an iterator costs an allocation per element in a debug build.
        for index in fields.indices {
            let field = fields[index]
            pairs.append((
                String(decoding: UnsafeRawBufferPointer(rebasing: bytes[field.nameStart..<field.nameEnd]), as: UTF8.self),
                String(decoding: UnsafeRawBufferPointer(rebasing: bytes[field.valueStart..<field.valueEnd]), as: UTF8.self)
            ))
        }
        let target = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[parsed.targetStart..<parsed.targetEnd]), as: UTF8.self)
        return HTTPRequestHead(version: parsed.version, method: parsed.method, uri: target, headers: HTTPHeaders(pairs))
    }

    // MARK: - Pieces

    /// The head ended before a verdict: more bytes may complete it, unless the limit is reached.
    private static func incomplete(end: Int, maxHeadBytes: Int) -> Outcome {
        end >= maxHeadBytes ? .notStrict : .needMoreBytes
    }

    private enum LineEnd { case crlf, incomplete, other }

    private static func lineEnd(_ bytes: UnsafeRawBufferPointer, at index: Int, limit: Int) -> LineEnd {
        guard index < limit else { return .incomplete }
        guard bytes[index] == UInt8(ascii: "\r") else { return .other }
        guard index + 1 < limit else { return .incomplete }
        return bytes[index + 1] == UInt8(ascii: "\n") ? .crlf : .other
    }

    private static func method(_ bytes: UnsafeRawBufferPointer, length: Int) -> HTTPMethod? {
        func equals(_ name: StaticString) -> Bool {
            guard length == name.utf8CodeUnitCount else { return false }
            for index in 0..<length where bytes[index] != name.utf8Start[index] { return false }
            return true
        }
        switch length {
        case 3: return equals("GET") ? .GET : equals("PUT") ? .PUT : nil
        case 4: return equals("POST") ? .POST : equals("HEAD") ? .HEAD : nil
        case 5: return equals("PATCH") ? .PATCH : nil
        case 6: return equals("DELETE") ? .DELETE : nil
        case 7: return equals("OPTIONS") ? .OPTIONS : nil
        default: return nil
        }
    }

    /// RFC 3986 `pchar` and `/ ?` (origin-form, RFC 9112 §3.2.1) with `%` taken as is: a bad
    /// escape is the path validator's business, as it is after llhttp.
    private static func isTargetByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"),
            UInt8(ascii: "!"), UInt8(ascii: "$"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"),
            UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="),
            UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "/"), UInt8(ascii: "?"), UInt8(ascii: "%"):
            true
        default:
            false
        }
    }

    private static func nameEquals(_ bytes: UnsafeRawBufferPointer, _ field: Field, _ lowercase: StaticString) -> Bool {
        guard field.nameEnd - field.nameStart == lowercase.utf8CodeUnitCount else { return false }
        for offset in 0..<lowercase.utf8CodeUnitCount {
            let byte = bytes[field.nameStart + offset]
            let lowered = byte &- UInt8(ascii: "A") < 26 ? byte | 0x20 : byte
            if lowered != lowercase.utf8Start[offset] { return false }
        }
        return true
    }

    private enum ConnectionOption { case close, keepAlive }

    private static func connectionOption(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) -> ConnectionOption? {
        func equals(_ lowercase: StaticString) -> Bool {
            guard end - start == lowercase.utf8CodeUnitCount else { return false }
            for offset in 0..<lowercase.utf8CodeUnitCount {
                let byte = bytes[start + offset]
                if (byte &- UInt8(ascii: "A") < 26 ? byte | 0x20 : byte) != lowercase.utf8Start[offset] { return false }
            }
            return true
        }
        return equals("close") ? .close : equals("keep-alive") ? .keepAlive : nil
    }

    /// 1–18 ASCII digits (no sign, no list, no inner space), or nil.
    private static func decimal(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Int? {
        guard end > start, end - start <= 18 else { return nil }
        var value = 0
        for index in start..<end {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            value = value * 10 + Int(digit)
        }
        return value
    }
}
