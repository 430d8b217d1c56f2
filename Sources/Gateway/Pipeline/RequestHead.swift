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
    /// Returns the body framing, or the 400 to send.
    static func validate(_ head: HTTPRequestHead) -> Result<BodyFraming, GatewayError> {
        let target = head.uri
        guard target.utf8.first == UInt8(ascii: "/") else {
            return .failure(.badRequest("request target must be an absolute path"))
        }
        if let problem = pathProblem(target) { return .failure(.badRequest(problem)) }

        var hostCount = 0
        var contentLength: Int? = nil
        var transferEncodings = 0
        var sawChunked = false
        for (name, value) in head.headers {
            guard isToken(name) else { return .failure(.badRequest("invalid header name")) }
            guard isFieldValue(value) else { return .failure(.badRequest("invalid header value")) }
            switch name.utf8.count {
            case 4 where name.lowercased() == "host":
                hostCount += 1
            case 14 where name.lowercased() == "content-length":
                for item in value.split(separator: ",", omittingEmptySubsequences: false) {
                    let trimmed = item.trimmingSpaces
                    guard !trimmed.isEmpty, trimmed.utf8.count <= 18,
                        trimmed.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                        let length = Int(trimmed)
                    else { return .failure(.badRequest("invalid Content-Length")) }
                    if let previous = contentLength, previous != length {
                        return .failure(.badRequest("conflicting Content-Length values"))
                    }
                    contentLength = length
                }
            case 17 where name.lowercased() == "transfer-encoding":
                for item in value.split(separator: ",", omittingEmptySubsequences: false) {
                    transferEncodings += 1
                    if item.trimmingSpaces.lowercased() == "chunked" { sawChunked = true }
                }
            default:
                break
            }
        }
        if head.version.major == 1 && head.version.minor >= 1 && hostCount != 1 {
            return .failure(.badRequest(hostCount == 0 ? "missing Host header" : "more than one Host header"))
        }
        if hostCount > 1 { return .failure(.badRequest("more than one Host header")) }
        if transferEncodings > 0 {
            // Only a lone `chunked` can be framed unambiguously; other codings are not supported.
            guard transferEncodings == 1, sawChunked, head.version.minor >= 1 else {
                return .failure(.badRequest("unsupported Transfer-Encoding"))
            }
            guard contentLength == nil else {
                return .failure(.badRequest("both Content-Length and Transfer-Encoding"))
            }
            return .success(.chunked)
        }
        if let contentLength { return .success(.contentLength(contentLength)) }
        return .success(.none)
    }

    /// Dot segments (also percent-encoded) would let `/api/../admin` match one route and reach
    /// another path upstream; NUL and backslash are refused for the same reason.
    static func pathProblem(_ target: String) -> String? {
        let path = target.utf8.firstIndex(of: UInt8(ascii: "?")).map { target[..<$0] } ?? Substring(target)
        var segmentStart = true
        var dots = 0
        var index = path.utf8.startIndex
        let end = path.utf8.endIndex
        while index < end {
            let byte = path.utf8[index]
            switch byte {
            case UInt8(ascii: "/"):
                if segmentStart && (dots == 1 || dots == 2) { return "dot segments are not allowed in the path" }
                segmentStart = true
                dots = 0
            case UInt8(ascii: "."):
                if segmentStart { dots += 1 }
            case UInt8(ascii: "%"):
                let next1 = path.utf8.index(after: index)
                guard next1 < end, path.utf8.index(after: next1) < end else {
                    return "invalid percent-encoding in the path"
                }
                let next2 = path.utf8.index(after: next1)
                let hi = path.utf8[next1] | 0x20
                let lo = path.utf8[next2] | 0x20
                guard isHex(path.utf8[next1]), isHex(path.utf8[next2]) else {
                    return "invalid percent-encoding in the path"
                }
                if hi == UInt8(ascii: "2") && lo == UInt8(ascii: "e") {
                    if segmentStart { dots += 1 }
                } else if hi == UInt8(ascii: "0") && lo == UInt8(ascii: "0") {
                    return "NUL in the path"
                } else {
                    if dots > 0 { segmentStart = false }
                }
                index = next2
            case UInt8(ascii: "\\"), 0..<0x21, 0x7F:
                return "invalid character in the path"
            default:
                segmentStart = false
            }
            index = path.utf8.index(after: index)
        }
        if segmentStart && (dots == 1 || dots == 2) { return "dot segments are not allowed in the path" }
        return nil
    }

    private static func isHex(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"),
            UInt8(ascii: "A")...UInt8(ascii: "F"): true
        default: false
        }
    }

    /// RFC 9110 §5.6.2 token.
    static func isToken(_ name: String) -> Bool {
        guard !name.isEmpty else { return false }
        return name.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"):
                true
            case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
                UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
                UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
                true
            default: false
            }
        }
    }

    /// RFC 9110 §5.5: no CTLs but HTAB; CR, LF and NUL in particular never pass.
    static func isFieldValue(_ value: String) -> Bool {
        value.utf8.allSatisfy { $0 >= 0x20 ? $0 != 0x7F : $0 == 0x09 }
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while let first = s.first, first == " " || first == "\t" { s = s.dropFirst() }
        while let last = s.last, last == " " || last == "\t" { s = s.dropLast() }
        return s
    }
}
