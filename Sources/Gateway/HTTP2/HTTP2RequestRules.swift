private import CNGHTTP2

/// RFC 9113 §8's rules for one request stream, kept by the gateway instead of nghttp2 (whose
/// "HTTP messaging" is switched off: it looked every field up and checked it again, ~1,000
/// instructions per request, before `HTTP2Stream` checked names and values once more).
///
/// The rules are nghttp2 1.52's server-side ones, verdict for verdict —
/// `HTTP2RequestRulesDifferentialTests` runs random and mutated requests through a session with
/// nghttp2's checks on and through one with these — so clients see what they saw before:
/// - every name a lowercase token, no value with a control byte (but HTAB), DEL or white space
///   at either end;
/// - pseudo-headers: only `:method`, `:scheme`, `:path`, `:authority` and (once extended CONNECT
///   is offered) `:protocol`, each at most once, non-empty, before every regular field, none in
///   trailers; `:method`, `:scheme` and `:path` required (`:authority` or `host` too), except for
///   CONNECT, which takes `:authority` alone; an `http(s)` `:path` starts with `/` (`*` for OPTIONS);
/// - `connection`, `keep-alive`, `proxy-connection`, `transfer-encoding` and `upgrade` are
///   refused, `te` allowed only as `trailers`; one `host`, non-empty;
/// - `content-length` (one, digits only) must equal the DATA received, which may never exceed it;
/// - trailers end the stream.
/// A malformed request is reset with PROTOCOL_ERROR, as nghttp2 did.
struct HTTP2RequestRules {
    /// What a field that passed is, so the stream files it without comparing its name again.
    enum FieldKind {
        case method, scheme, path, authority, `protocol`, host, cookie, other
    }

    private struct Seen: OptionSet {
        let rawValue: UInt16
        static let method = Seen(rawValue: 1 << 0)
        static let path = Seen(rawValue: 1 << 1)
        static let scheme = Seen(rawValue: 1 << 2)
        static let authority = Seen(rawValue: 1 << 3)
        static let `protocol` = Seen(rawValue: 1 << 4)
        static let host = Seen(rawValue: 1 << 5)
        /// A regular field went by: no pseudo-header may follow.
        static let regularField = Seen(rawValue: 1 << 6)
        static let connect = Seen(rawValue: 1 << 7)
        static let options = Seen(rawValue: 1 << 8)
        static let regularPath = Seen(rawValue: 1 << 9)
        static let asteriskPath = Seen(rawValue: 1 << 10)
        static let httpScheme = Seen(rawValue: 1 << 11)
        static let badPriority = Seen(rawValue: 1 << 12)
    }

    private var seen: Seen = []
    /// The request's `content-length`; -1 when it has none (or is a CONNECT, whose DATA is a tunnel's).
    private var contentLength: Int64 = -1
    private var bodyBytes: Int64 = 0
    /// RFC 9218 urgency and incremental flag from a `priority` field, nil without one.
    private(set) var priority: (urgency: UInt8, incremental: Bool)?
    /// Whether `:authority` came (the request's host then, whatever a `host` field says).
    var sawAuthority: Bool { self.seen.contains(.authority) }

    init() {}

    /// One field of the request head (`trailer` false) or of its trailers: what it is, or nil
    /// when it makes the request malformed (RFC 9113 §8.1.1). `connectProtocol`: whether the
    /// connection offered extended CONNECT (`:protocol` is refused otherwise).
    mutating func field(
        name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>, trailer: Bool, connectProtocol: Bool
    ) -> FieldKind? {
        guard name.count > 0 && name[0] == UInt8(ascii: ":") else {
            guard Self.isFieldName(name) else { return nil }
            return self.regularField(name: name, value: value, trailer: trailer)
        }
        // A pseudo-header's name is one of five, compared whole below: any other, well-formed or
        // not, is refused, so its bytes need no check of their own.
        if trailer || self.seen.contains(.regularField) { return nil }
        // Names told apart by their length first, then their bytes; values checked with
        // nghttp2's own tables (its exported checks), once each per request.
        guard let base = value.baseAddress, value.count > 0 else { return nil }  // every pseudo-header is non-empty
        switch name.count {
        case 5 where bytesEqual(name, ":path"):
            guard nghttp2_check_path(base, value.count) != 0, self.first(.path) else { return nil }
            if value[0] == UInt8(ascii: "/") {
                self.seen.insert(.regularPath)
            } else if value.count == 1 && value[0] == UInt8(ascii: "*") {
                self.seen.insert(.asteriskPath)
            }
            return .path
        case 7 where bytesEqual(name, ":method"):
            guard nghttp2_check_method(base, value.count) != 0, self.first(.method) else { return nil }
            if value.count == 7 {
                if bytesEqual(value, "CONNECT") {
                    self.seen.insert(.connect)
                } else if bytesEqual(value, "OPTIONS") {
                    self.seen.insert(.options)
                }
            }
            return .method
        case 7 where bytesEqual(name, ":scheme"):
            guard Self.isScheme(value), self.first(.scheme) else { return nil }
            if bytesEqualIgnoringASCIICase(value, "https") || bytesEqualIgnoringASCIICase(value, "http") {
                self.seen.insert(.httpScheme)
            }
            return .scheme
        case 9 where bytesEqual(name, ":protocol"):
            guard connectProtocol, Self.isFieldValue(value), self.first(.protocol) else { return nil }
            return .protocol
        case 10 where bytesEqual(name, ":authority"):
            guard nghttp2_check_authority(base, value.count) != 0, self.first(.authority) else { return nil }
            return .authority
        default:
            return nil
        }
    }

    private mutating func regularField(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>, trailer: Bool) -> FieldKind? {
        self.seen.insert(.regularField)
        if name.count == 4 && bytesEqual(name, "host") {
            guard let base = value.baseAddress, value.count > 0, nghttp2_check_authority(base, value.count) != 0 else { return nil }
            return self.first(.host) ? .host : nil
        }
        guard Self.isFieldValue(value) else { return nil }
        switch name.count {
        case 2 where bytesEqual(name, "te"):
            if !bytesEqualIgnoringASCIICase(value, "trailers") { return nil }
        case 6 where bytesEqual(name, "cookie"):
            return .cookie
        case 7 where bytesEqual(name, "upgrade"):
            return nil
        case 8 where bytesEqual(name, "priority"):
            if !trailer && !self.seen.contains(.badPriority) {
                if let priority = Self.priority(value, from: self.priority ?? (3, false)) {
                    self.priority = priority
                } else {
                    self.priority = nil
                    self.seen.insert(.badPriority)
                }
            }
        case 10 where bytesEqual(name, "connection") || bytesEqual(name, "keep-alive"):
            return nil
        case 14 where bytesEqual(name, "content-length"):
            guard self.contentLength == -1, let length = Self.decimal(value) else { return nil }
            self.contentLength = length
        case 16 where bytesEqual(name, "proxy-connection"):
            return nil
        case 17 where bytesEqual(name, "transfer-encoding"):
            return nil
        default:
            break
        }
        return .other
    }

    /// The request head's fields are all in: whether it is a well-formed request (the stream
    /// is reset otherwise). `endStream`: the HEADERS frame ended the stream.
    mutating func headEnded(endStream: Bool) -> Bool {
        // Sets as masks (`seen.has(...)`): a set literal is an array first, an allocation in
        // the debug builds whose allocations `make test` counts.
        if self.seen.contains(.connect) && !self.seen.contains(.protocol) {
            guard !self.has(anyOf: Seen.scheme.union(.path)), self.seen.contains(.authority) else { return false }
            self.contentLength = -1
        } else {
            guard self.has(allOf: Seen.method.union(.path).union(.scheme)), self.has(anyOf: Seen.authority.union(.host)) else {
                return false
            }
            if self.seen.contains(.protocol) && !self.has(allOf: Seen.connect.union(.authority)) { return false }
            // An http(s) request's path is origin-form (or `*`, for OPTIONS only).
            if self.seen.contains(.httpScheme)
                && !(self.seen.contains(.regularPath) || self.has(allOf: Seen.options.union(.asteriskPath)))
            {
                return false
            }
        }
        return !endStream || self.streamEnded()
    }

    private func has(allOf flags: Seen) -> Bool { self.seen.rawValue & flags.rawValue == flags.rawValue }
    private func has(anyOf flags: Seen) -> Bool { self.seen.rawValue & flags.rawValue != 0 }

    /// Trailers are all in: they must end the stream, whose body must match its `content-length`.
    func trailersEnded(endStream: Bool) -> Bool {
        endStream && self.streamEnded()
    }

    /// `count` more body bytes: false once they exceed the request's `content-length`.
    mutating func bodyReceived(count: Int) -> Bool {
        self.bodyBytes += Int64(count)
        return self.contentLength == -1 || self.bodyBytes <= self.contentLength
    }

    /// The client ended the stream: its body must be as long as it said.
    func streamEnded() -> Bool {
        self.contentLength == -1 || self.contentLength == self.bodyBytes
    }

    /// Notes `flag`; false if it was already noted (a repeated pseudo-header or `host`).
    private mutating func first(_ flag: Seen) -> Bool {
        self.seen.insert(flag).inserted
    }

    // MARK: - Bytes

    // Byte loops by index throughout: the generic collection methods (`first`, `last`, slices)
    // allocate in the debug builds whose allocations `make test` counts.

    /// A lowercase token (RFC 9113 §8.2.1): the table's entries ("0" 0x30, "1" 0x31) ANDed, so
    /// no branch per byte and one test at the end.
    private static func isFieldName(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        var index = 0
        guard name.count > 0 else { return false }
        let table = lowercaseTokenTable.utf8Start
        var all: UInt8 = 1
        while index < name.count {
            all &= table[Int(name[index])]
            index += 1
        }
        return all & 1 == 1
    }

    /// RFC 9113 §8.2.1: no control byte but HTAB, no DEL, no white space at either end.
    private static func isFieldValue(_ value: UnsafeBufferPointer<UInt8>) -> Bool {
        guard value.count > 0 else { return true }
        let first = value[0], last = value[value.count - 1]
        if first == 0x20 || first == 0x09 || last == 0x20 || last == 0x09 { return false }
        return RequestValidator.isFieldValue(bytes: value)
    }

    /// RFC 3986 §3.1 `scheme`.
    private static func isScheme(_ value: UnsafeBufferPointer<UInt8>) -> Bool {
        guard value.count > 0, (value[0] | 0x20) &- UInt8(ascii: "a") < 26 else { return false }
        var index = 1
        while index < value.count {
            let byte = value[index]
            index += 1
            let letter = (byte | 0x20) &- UInt8(ascii: "a") < 26, digit = byte &- UInt8(ascii: "0") < 10
            if !(letter || digit || byte == UInt8(ascii: "+") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".")) {
                return false
            }
        }
        return true
    }

    /// One or more digits, within `Int64`: nghttp2's limit (`HTTP1Grammar.decimal` stops at 18
    /// digits, which would refuse lengths nghttp2 takes).
    private static func decimal(_ value: UnsafeBufferPointer<UInt8>) -> Int64? {
        guard value.count > 0 else { return nil }
        var result: Int64 = 0
        var index = 0
        while index < value.count {
            let digit = value[index] &- UInt8(ascii: "0")
            index += 1
            guard digit < 10 else { return nil }
            let (times, overflow1) = result.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(Int64(digit))
            guard !overflow1 && !overflow2 else { return nil }
            result = sum
        }
        return result
    }

    /// RFC 9218 §4's `priority` field, read as a Structured Fields dictionary of simple members:
    /// `u` (0–7) and `i` (a boolean) change `current`, other keys are skipped. Inner lists,
    /// strings and parameters are not read: such a field is ignored whole (nghttp2, which read
    /// them, ignored a field it could not parse the same way). Scheduling only: no verdict
    /// depends on it.
    static func priority(_ value: UnsafeBufferPointer<UInt8>, from current: (urgency: UInt8, incremental: Bool)) -> (urgency: UInt8, incremental: Bool)? {
        var result = current
        var index = 0
        func skipSpaces() { while index < value.count && (value[index] == 0x20 || value[index] == 0x09) { index += 1 } }
        while index < value.count {
            // key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
            let keyStart = index
            guard value[index] &- UInt8(ascii: "a") < 26 || value[index] == UInt8(ascii: "*") else { return nil }
            index += 1
            while index < value.count {
                let byte = value[index]
                guard byte &- UInt8(ascii: "a") < 26 || byte &- UInt8(ascii: "0") < 10 || byte == UInt8(ascii: "_")
                    || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "*")
                else { break }
                index += 1
            }
            let key = UnsafeBufferPointer(rebasing: value[keyStart..<index])
            var member: Int? = nil  // an integer member's value; a bare key is `?1`
            var boolean: Bool? = true
            if index < value.count && value[index] == UInt8(ascii: "=") {
                index += 1
                guard index < value.count else { return nil }
                if value[index] == UInt8(ascii: "?") {
                    guard index + 1 < value.count, value[index + 1] == UInt8(ascii: "0") || value[index + 1] == UInt8(ascii: "1") else { return nil }
                    boolean = value[index + 1] == UInt8(ascii: "1")
                    index += 2
                } else {
                    boolean = nil
                    let start = index
                    if value[index] == UInt8(ascii: "-") { index += 1 }
                    let digitsStart = index
                    while index < value.count && value[index] &- UInt8(ascii: "0") < 10 { index += 1 }
                    guard index > digitsStart, index - digitsStart <= 15 else { return nil }
                    // A decimal or a token, string or byte sequence: not read here.
                    if index < value.count && value[index] == UInt8(ascii: ".") { return nil }
                    var number = 0
                    for digit in digitsStart..<index { number = number * 10 + Int(value[digit] - UInt8(ascii: "0")) }
                    member = value[start] == UInt8(ascii: "-") ? -number : number
                }
            }
            if index < value.count && value[index] == UInt8(ascii: ";") { return nil }  // parameters
            if bytesEqual(key, "u") {
                // An urgency out of range or not an integer leaves the current one.
                if let member, member >= 0 && member <= 7 { result.urgency = UInt8(member) }
            } else if bytesEqual(key, "i") {
                if let boolean { result.incremental = boolean }
            }
            skipSpaces()
            guard index < value.count else { break }
            guard value[index] == UInt8(ascii: ",") else { return nil }
            index += 1
            skipSpaces()
            guard index < value.count else { return nil }  // a trailing comma
        }
        return result
    }
}

/// RFC 9113 §8.2.1's field name bytes: a `tchar` that is not an uppercase letter
/// (`HTTP2RequestRulesDifferentialTests` checks the table against `isHTTPTokenByte`'s).
@inline(__always)
func isLowercaseTokenByte(_ byte: UInt8) -> Bool {
    lowercaseTokenTable.utf8Start[Int(byte)] & 1 == 1
}

/// "1" at each byte value that is a lowercase `tchar`: 256 entries, so no range check per byte.
/// A literal returned, not a global, so no lazy initialization is checked per use.
@inline(__always)
private var lowercaseTokenTable: StaticString {
    "0000000000000000000000000000000001011111001101101111111111000000000000000000000000000000000000111111111111111111111111111110101000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
}
