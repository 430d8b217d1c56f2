import NIOHTTP1

/// How a request's body is framed on the wire, after validation.
enum BodyFraming: Equatable {
    case none
    case contentLength(Int)
    case chunked

    var hasBody: Bool {
        switch self {
        case .none, .contentLength(0): false
        default: true
        }
    }
}

/// The client protocol a request arrived on (recorded for logs and `X-Forwarded-Proto` decisions).
enum ClientProtocol: String, Sendable {
    case http1_0 = "HTTP/1.0"
    case http1_1 = "HTTP/1.1"
    case http2 = "HTTP/2"
}

/// Request-head checks that sit on top of llhttp's own parsing. They refuse every shape of
/// ambiguous framing an upstream could read differently from us (request smuggling, RFC 9112 §6.3,
/// §11.2): the gateway re-frames bodies itself, so anything we cannot frame exactly is a 400.
enum RequestValidator {
    /// What the validating pass over a head's fields found besides the framing, so the request
    /// path looks no field up again.
    struct ValidatedHead {
        var framing: BodyFraming
        /// The `Host` field (a valid head has at most one).
        var host: String?
        /// The first `X-Request-Id` field, as the client sent it.
        var requestID: String?
        /// An `Expect` field lists `100-continue`.
        var expectsContinue = false
        /// The `traceparent` field; empty (invalid) when the client sent more than one.
        var traceparent: String? = nil
    }

    /// Returns the body framing, or the 400 to send.
    static func validate(_ head: RequestHead) -> Result<BodyFraming, GatewayError> {
        self.inspect(head).map(\.framing)
    }

    /// `validate`, with the fields the request path needs.
    static func inspect(_ head: RequestHead) -> Result<ValidatedHead, GatewayError> {
        var hosts = RecentText()
        return self.inspect(head, recentHost: &hosts)
    }

    /// `inspect`, its `host` text reused from the connection's last request when the bytes match.
    static func inspect(_ head: RequestHead, recentHost: inout RecentText) -> Result<ValidatedHead, GatewayError> {
        let target = head.uri
        guard target.utf8.first == UInt8(ascii: "/") else {
            return .failure(.badRequest("request target must be an absolute path"))
        }
        if let problem = pathProblem(target) { return .failure(.badRequest(problem)) }

        var hostCount = 0
        var contentLength: Int? = nil
        var transferEncodings = 0
        var sawChunked = false
        var host: String? = nil
        var requestID: String? = nil
        var expectsContinue = false
        var traceparent: String? = nil
        var refusal: GatewayError? = nil
        // Field lines were checked where they were made (the HTTP/1.1 grammar, the HTTP/2 stream):
        // only decoded fields are checked here.
        let checked = head.headers.lines != nil
        head.headers.forEachField { name, value in
            guard checked || (!name.isEmpty && name.allSatisfy(isHTTPTokenByte)) else {
                refusal = .badRequest("invalid header name")
                return false
            }
            guard checked || isFieldValue(bytes: value) else {
                refusal = .badRequest("invalid header value")
                return false
            }
            switch name.count {
            case 4 where tokenEqualsIgnoringASCIICase(name, "host"):
                hostCount += 1
                if host == nil { host = recentHost.text(for: value) }
            case 6 where tokenEqualsIgnoringASCIICase(name, "expect"):
                if !visitCommaSeparated(value, { !bytesEqualIgnoringASCIICase($0, "100-continue") }) { expectsContinue = true }
            case 11 where tokenEqualsIgnoringASCIICase(name, "traceparent"):
                traceparent = traceparent == nil ? String(decoding: value, as: UTF8.self) : ""
            case 12 where tokenEqualsIgnoringASCIICase(name, "x-request-id"):
                if requestID == nil { requestID = String(decoding: value, as: UTF8.self) }
            case 14 where tokenEqualsIgnoringASCIICase(name, "content-length"):
                var conflict = false
                let valid = visitCommaSeparated(value) { element in
                    guard let length = HTTP1Grammar.decimal(element) else { return false }
                    if let previous = contentLength, previous != length { conflict = true }
                    contentLength = length
                    return !conflict
                }
                guard valid else {
                    refusal = .badRequest(conflict ? "conflicting Content-Length values" : "invalid Content-Length")
                    return false
                }
            case 17 where tokenEqualsIgnoringASCIICase(name, "transfer-encoding"):
                _ = visitCommaSeparated(value) { element in
                    transferEncodings += 1
                    if bytesEqualIgnoringASCIICase(element, "chunked") { sawChunked = true }
                    return true
                }
            default:
                break
            }
            return true
        }
        if let refusal { return .failure(refusal) }
        if head.version.major == 1 && head.version.minor >= 1 && hostCount != 1 {
            return .failure(.badRequest(hostCount == 0 ? "missing Host header" : "more than one Host header"))
        }
        if hostCount > 1 { return .failure(.badRequest("more than one Host header")) }
        var framing = BodyFraming.none
        if transferEncodings > 0 {
            // Only a lone `chunked` can be framed unambiguously; other codings are not supported.
            guard transferEncodings == 1, sawChunked, head.version.minor >= 1 else {
                return .failure(.badRequest("unsupported Transfer-Encoding"))
            }
            guard contentLength == nil else {
                return .failure(.badRequest("both Content-Length and Transfer-Encoding"))
            }
            framing = .chunked
        } else if let contentLength {
            framing = .contentLength(contentLength)
        }
        return .success(ValidatedHead(
            framing: framing, host: host, requestID: requestID, expectsContinue: expectsContinue,
            traceparent: traceparent
        ))
    }

    /// Dot segments would let `/api/../admin` match one route and reach another path upstream, so
    /// every spelling an upstream may read as one is refused: `.` and `%2e` for the dots (also
    /// double-encoded, `%252e`), and as the segment's end `/`, `%2F`, `%5C` (servers that treat a
    /// backslash as a slash), `;` or `%3B` (path parameters, `..;/` in Tomcat-style servers) and
    /// the end of the path. A raw backslash or `#`, NUL, overlong UTF-8 (`%C0`, `%C1`) and malformed
    /// percent-encoding are refused outright. `%2F` and `%5C` inside a segment are forwarded
    /// unchanged (docs/configuration.md, "Request paths").
    static func pathProblem(_ target: String) -> String? {
        target.withUTF8Bytes { pathProblem(bytes: $0) }
    }

    private static func pathProblem(bytes: UnsafeBufferPointer<UInt8>) -> String? {
        var dots = 0
        var other = false
        var index = 0
        let end = bytes.count
        /// The byte `%XY` at `at` stands for, if `XY` is hex.
        func decoded(at: Int) -> UInt8? {
            guard at + 2 < end, isHex(bytes[at + 1]), isHex(bytes[at + 2]) else { return nil }
            return hexValue(bytes[at + 1]) << 4 | hexValue(bytes[at + 2])
        }
        while index < end {
            var byte = bytes[index]
            if byte == UInt8(ascii: "?") { break }
            switch byte {
            case UInt8(ascii: "%"):
                guard let value = decoded(at: index) else {
                    return "invalid percent-encoding in the path"
                }
                index += 3
                byte = value
                if value == UInt8(ascii: "%"), index + 1 < end, isHex(bytes[index]), isHex(bytes[index + 1]) {
                    // `%25` + hex: an upstream that decodes twice sees this byte.
                    let twice = hexValue(bytes[index]) << 4 | hexValue(bytes[index + 1])
                    if Self.isPathDelimiter(twice) || twice == UInt8(ascii: ".") {
                        byte = twice
                        index += 2
                    }
                }
                if byte == 0 { return "NUL in the path" }
                if byte == 0xC0 || byte == 0xC1 { return "invalid percent-encoding in the path" }
            case UInt8(ascii: "\\"), UInt8(ascii: "#"), 0..<0x21, 0x7F:
                // A fragment is never sent; an upstream would cut the path there, after routing.
                return "invalid character in the path"
            default:
                index += 1
            }
            if byte == UInt8(ascii: ".") {
                if !other { dots += 1 }
            } else if Self.isPathDelimiter(byte) {
                if !other && (dots == 1 || dots == 2) { return "dot segments are not allowed in the path" }
                // After `;` come parameters up to the next slash: they are not a segment of their own.
                other = byte == UInt8(ascii: ";")
                dots = 0
            } else {
                other = true
            }
        }
        if !other && (dots == 1 || dots == 2) { return "dot segments are not allowed in the path" }
        return nil
    }

    /// What ends a path segment for some upstream: `/`, `\` and `;`.
    private static func isPathDelimiter(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: "/") || byte == UInt8(ascii: "\\") || byte == UInt8(ascii: ";")
    }

    private static func hexValue(_ byte: UInt8) -> UInt8 {
        byte <= UInt8(ascii: "9") ? byte - UInt8(ascii: "0") : (byte | 0x20) - UInt8(ascii: "a") + 10
    }

    private static func isHex(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"),
            UInt8(ascii: "A")...UInt8(ascii: "F"): true
        default: false
        }
    }

    /// RFC 9110 §5.5: no CTLs but HTAB; CR, LF and NUL in particular never pass.
    static func isFieldValue(_ value: String) -> Bool {
        value.withUTF8Bytes(Self.isFieldValue(bytes:))
    }

    /// Eight bytes at a time (a JWT of a few hundred bytes is checked on every request): a word
    /// with no byte below 0x20 and none equal to 0x7F passes whole; a word with one (a tab, or
    /// a refusal) is looked at byte by byte.
    static func isFieldValue(bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var index = 0
        if let base = bytes.baseAddress, bytes.count >= 8 {
            let raw = UnsafeRawPointer(base)
            while index + 8 <= bytes.count {
                guard Self.isFieldValueWord(raw.loadUnaligned(fromByteOffset: index, as: UInt64.self), bytes, at: index) else {
                    return false
                }
                index += 8
            }
            // The last bytes as the word that ends the value (overlapping bytes already passed):
            // no byte-by-byte tail.
            if index < bytes.count {
                return Self.isFieldValueWord(raw.loadUnaligned(fromByteOffset: bytes.count - 8, as: UInt64.self), bytes, at: bytes.count - 8)
            }
            return true
        }
        while index < bytes.count {
            if !Self.isFieldValueByte(bytes[index]) { return false }
            index += 1
        }
        return true
    }

    /// The eight bytes of `bytes` at `offset`, loaded as `word`.
    @inline(__always)
    private static func isFieldValueWord(_ word: UInt64, _ bytes: UnsafeBufferPointer<UInt8>, at offset: Int) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        // Some byte < 0x20, or some byte of word ^ 0x7F… equal to 0 (< 1): exact as a yes/no (a
        // borrow only follows a byte that already matched).
        let control = (word &- ones &* 0x20) & ~word & highs
        let delete = ((word ^ (ones &* 0x7F)) &- ones) & ~(word ^ (ones &* 0x7F)) & highs
        if control | delete == 0 { return true }
        for index in offset..<offset + 8 where !Self.isFieldValueByte(bytes[index]) { return false }
        return true
    }

    @inline(__always)
    static func isFieldValueByte(_ byte: UInt8) -> Bool {
        byte >= 0x20 ? byte != 0x7F : byte == 0x09
    }
}

extension Substring {
    /// Without leading and trailing SP and HTAB (RFC 9110 OWS), by bytes: a `Character` walk
    /// would run grapheme breaking over every value it trims.
    var trimmingSpaces: Substring {
        let bytes = self.utf8
        var start = bytes.startIndex, end = bytes.endIndex
        while start < end, bytes[start] == UInt8(ascii: " ") || bytes[start] == UInt8(ascii: "\t") {
            bytes.formIndex(after: &start)
        }
        while start < end {
            let last = bytes.index(before: end)
            guard bytes[last] == UInt8(ascii: " ") || bytes[last] == UInt8(ascii: "\t") else { break }
            end = last
        }
        return self[start..<end]
    }
}
