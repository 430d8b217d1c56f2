import CNGHTTP2
import Foundation
import Testing
@testable import Gateway

/// Differential tests of `HTTP2RequestRules` against nghttp2's own HTTP messaging checks, which
/// the gateway switches off. The same client bytes (preface, SETTINGS, one request stream's
/// HEADERS, DATA and trailers, fed in pieces split at random points) go into two server sessions:
/// one with nghttp2's checks on, and one with them off whose callbacks apply the rules as
/// `HTTP2ServerHandler` does (reset with PROTOCOL_ERROR on a refusal, nothing more read of the
/// stream). Both must reset the stream or not, report the head or not, and, for a stream not
/// reset, deliver the same fields, body bytes and end. Cases are hand-written vectors and
/// random, mutated requests from a seeded generator (`FUZZ_CASES`, `FUZZ_SEED`; `make fuzz`
/// runs more).
@Suite struct HTTP2RequestRulesDifferentialTests {
    static let defaultCases = 20000

    typealias Field = (name: [UInt8], value: [UInt8])

    /// One request stream as the client sends it.
    struct Request {
        var fields: [Field]
        var endOnHeaders = false
        var data: [Int] = []
        var endOnData = true
        var trailers: [Field]? = nil
        var trailersEnd = true
        var connectProtocol = true
    }

    static func field(_ name: String, _ value: String) -> Field { (Array(name.utf8), Array(value.utf8)) }

    static func get(_ extra: [Field] = [], path: String = "/a", method: String = "GET") -> [Field] {
        [field(":method", method), field(":scheme", "https"), field(":authority", "a.example"), field(":path", path)] + extra
    }

    static let vectors: [(String, Request)] = [
        ("plain GET", Request(fields: get(), endOnHeaders: true)),
        ("uppercase name", Request(fields: get([field("X-Upper", "v")]), endOnHeaders: true)),
        ("invalid name without uppercase", Request(fields: get([field("x@y", "v"), field("x-a", "1")]), endOnHeaders: true)),
        ("value with a NUL", Request(fields: get([field("x-a", "a\u{0}b")]), endOnHeaders: true)),
        ("value with CR LF", Request(fields: get([field("x-a", "a\r\nx-b: c")]), endOnHeaders: true)),
        ("value with edge space", Request(fields: get([field("x-a", " v"), field("x-b", "v\t")]), endOnHeaders: true)),
        ("connection", Request(fields: get([field("connection", "close")]), endOnHeaders: true)),
        ("keep-alive", Request(fields: get([field("keep-alive", "5")]), endOnHeaders: true)),
        ("proxy-connection", Request(fields: get([field("proxy-connection", "x")]), endOnHeaders: true)),
        ("transfer-encoding", Request(fields: get([field("transfer-encoding", "chunked")]), endOnHeaders: true)),
        ("upgrade", Request(fields: get([field("upgrade", "websocket")]), endOnHeaders: true)),
        ("te trailers", Request(fields: get([field("te", "Trailers")]), endOnHeaders: true)),
        ("te gzip", Request(fields: get([field("te", "gzip")]), endOnHeaders: true)),
        ("pseudo after regular", Request(fields: [field(":method", "GET"), field("x-a", "1"), field(":path", "/"), field(":scheme", "https"), field(":authority", "a")], endOnHeaders: true)),
        ("duplicate :path", Request(fields: get([field(":path", "/b")]), endOnHeaders: true)),
        ("unknown pseudo", Request(fields: [field(":status", "200")] + get(), endOnHeaders: true)),
        ("missing :scheme", Request(fields: [field(":method", "GET"), field(":authority", "a"), field(":path", "/")], endOnHeaders: true)),
        ("host instead of :authority", Request(fields: [field(":method", "GET"), field(":scheme", "https"), field(":path", "/"), field("host", "a")], endOnHeaders: true)),
        ("two hosts", Request(fields: get([field("host", "a"), field("host", "a")]), endOnHeaders: true)),
        ("empty host", Request(fields: get([field("host", "")]), endOnHeaders: true)),
        ("host with a space", Request(fields: get([field("host", "a b")]), endOnHeaders: true)),
        ("no authority", Request(fields: [field(":method", "GET"), field(":scheme", "https"), field(":path", "/")], endOnHeaders: true)),
        ("path not origin-form", Request(fields: get(path: "a"), endOnHeaders: true)),
        ("asterisk for OPTIONS", Request(fields: get(path: "*", method: "OPTIONS"), endOnHeaders: true)),
        ("asterisk for GET", Request(fields: get(path: "*"), endOnHeaders: true)),
        ("path with a space", Request(fields: get(path: "/a b"), endOnHeaders: true)),
        ("method with a space", Request(fields: get(method: "G T"), endOnHeaders: true)),
        ("CONNECT", Request(fields: [field(":method", "CONNECT"), field(":authority", "a:443")], endOnHeaders: true)),
        ("CONNECT with a path", Request(fields: [field(":method", "CONNECT"), field(":authority", "a:443"), field(":path", "/")], endOnHeaders: true)),
        ("extended CONNECT", Request(fields: [field(":method", "CONNECT"), field(":protocol", "websocket"), field(":scheme", "https"), field(":authority", "a"), field(":path", "/ws")], endOnHeaders: false, endOnData: false)),
        ("extended CONNECT not offered", Request(fields: [field(":method", "CONNECT"), field(":protocol", "websocket"), field(":scheme", "https"), field(":authority", "a"), field(":path", "/ws")], endOnHeaders: false, endOnData: false, connectProtocol: false)),
        (":protocol on GET", Request(fields: get([field(":protocol", "websocket")]), endOnHeaders: true)),
        ("content-length and its body", Request(fields: get([field("content-length", "5")], method: "POST"), data: [2, 3])),
        ("body longer than content-length", Request(fields: get([field("content-length", "5")], method: "POST"), data: [4, 4])),
        ("body shorter than content-length", Request(fields: get([field("content-length", "5")], method: "POST"), data: [4])),
        ("content-length but no body", Request(fields: get([field("content-length", "5")], method: "POST"), endOnHeaders: true)),
        ("content-length 0, HEADERS ends", Request(fields: get([field("content-length", "0")], method: "POST"), endOnHeaders: true)),
        ("two equal content-lengths", Request(fields: get([field("content-length", "3"), field("content-length", "3")], method: "POST"), data: [3])),
        ("signed content-length", Request(fields: get([field("content-length", "+3")], method: "POST"), data: [3])),
        ("content-length with a space", Request(fields: get([field("content-length", "3 ")], method: "POST"), data: [3])),
        ("content-length past Int64", Request(fields: get([field("content-length", "99999999999999999999")], method: "POST"), data: [3])),
        ("trailers", Request(fields: get([field("content-length", "3")], method: "POST"), data: [3], endOnData: false, trailers: [field("x-t", "1")])),
        ("trailers without END_STREAM", Request(fields: get(method: "POST"), data: [3], endOnData: false, trailers: [field("x-t", "1")], trailersEnd: false)),
        ("pseudo in trailers", Request(fields: get(method: "POST"), data: [3], endOnData: false, trailers: [field(":path", "/")])),
        ("content-length in trailers", Request(fields: get(method: "POST"), data: [3], endOnData: false, trailers: [field("content-length", "4")])),
        ("priority", Request(fields: get([field("priority", "u=1, i")]), endOnHeaders: true)),
        ("empty name", Request(fields: get([field("", "v")]), endOnHeaders: true)),
        ("colon alone", Request(fields: [field(":", "v")] + get(), endOnHeaders: true)),
    ]

    @Test(arguments: vectors.indices)
    func vector(_ index: Int) throws {
        let (label, request) = Self.vectors[index]
        let bytes = Self.encode(request)
        try Self.compare(bytes, connectProtocol: request.connectProtocol, splits: [], label: label)
    }

    /// The vectors reach both verdicts, so the comparison is not vacuous.
    @Test func vectorsReachEveryVerdict() throws {
        var refused = 0, accepted = 0
        for (_, request) in Self.vectors {
            let outcome = Self.run(Self.encode(request), connectProtocol: request.connectProtocol, splits: [], rules: true)
            if outcome.reset { refused += 1 } else { accepted += 1 }
        }
        #expect(refused >= 30 && accepted >= 8, "refused \(refused), accepted \(accepted)")
    }

    /// The lowercase-token table is `isHTTPTokenByte`'s without uppercase letters.
    @Test func lowercaseTokenTable() {
        for byte in UInt8(0)...UInt8(255) {
            let uppercase = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")
            #expect(isLowercaseTokenByte(byte) == (isHTTPTokenByte(byte) && !uppercase), "\(byte)")
        }
    }

    /// RFC 9218's `priority` as the rules read it for nghttp2's scheduler (no verdict depends on
    /// it, so the differential comparison cannot see it).
    @Test(arguments: [
        ("u=1, i", (UInt8(1), true)), ("u=0", (0, false)), ("i", (3, true)), ("i=?0, u=7", (7, false)),
        ("u=9", (3, false)), ("u=-1", (3, false)), ("u=2, x=5, y=?1, *z", (2, false)), ("u=1,i=?1", (1, true)),
        ("", (3, false)),
    ] as [(String, (UInt8, Bool))])
    func priorityIsRead(_ text: String, _ expected: (UInt8, Bool)) throws {
        let read = Array(text.utf8).withUnsafeBufferPointer { HTTP2RequestRules.priority($0, from: (3, false)) }
        let priority = try #require(read, "\(text)")
        #expect(priority.urgency == expected.0 && priority.incremental == expected.1, "\(text): \(priority)")
    }

    @Test(arguments: ["u=1;a=2", "u=1.5", "u=\"x\"", "u=(1 2)", "u=1,", "U=1", "u=1 i", "u=", "i=?2"])
    func priorityNotReadIsIgnoredWhole(_ text: String) {
        #expect(Array(text.utf8).withUnsafeBufferPointer { HTTP2RequestRules.priority($0, from: (3, false)) } == nil, "\(text)")
    }

    @Test func randomAndMutatedRequests() throws {
        let counts = try DifferentialFuzz.run(
            defaultSeed: 0x4854_5450_3252, defaultCases: Self.defaultCases,
            generate: { random in
                let request = Self.generate(&random)
                return (Self.encode(request), request.connectProtocol)
            },
            check: { bytes, connectProtocol, splits, label in
                try Self.compare(bytes, connectProtocol: connectProtocol, splits: splits, label: label)
            }
        )
        // The generator reaches both sides of the rules.
        #expect(counts.accepted > counts.cases / 10 && counts.refused > counts.cases / 10, "\(counts)")
    }

    // MARK: - Comparing

    /// Runs both sessions; returns whether the stream was accepted (not reset).
    @discardableResult
    static func compare(_ bytes: [UInt8], connectProtocol: Bool, splits: [Int], label: String) throws -> Bool? {
        let reference = Self.run(bytes, connectProtocol: connectProtocol, splits: splits, rules: false)
        let ours = Self.run(bytes, connectProtocol: connectProtocol, splits: splits, rules: true)
        try #require(reference.goAway == nil, "\(label): the reference session failed the connection: \(reference)")
        #expect(ours.goAway == nil, "\(label): \(ours)")
        #expect(ours.reset == reference.reset, "\(label): reset \(ours.reset), nghttp2 \(reference.reset); fields \(reference.fields.map(Self.show))")
        #expect(ours.resetCode == reference.resetCode, "\(label)")
        #expect(ours.headAccepted == reference.headAccepted, "\(label): head \(ours.headAccepted), nghttp2 \(reference.headAccepted)")
        if !reference.reset && !ours.reset {
            #expect(ours.fields.map(Self.show) == reference.fields.map(Self.show), "\(label)")
            #expect(ours.bodyBytes == reference.bodyBytes, "\(label)")
            #expect(ours.ended == reference.ended, "\(label)")
        }
        return !reference.reset
    }

    static func show(_ field: Field) -> String {
        String(decoding: field.name, as: UTF8.self) + ": " + field.value.map { $0 >= 0x20 && $0 < 0x7F ? String(UnicodeScalar($0)) : "\\x\(String($0, radix: 16))" }.joined()
    }

    /// What a session made of the stream.
    struct Outcome: CustomStringConvertible {
        var fields: [Field] = []
        var headAccepted = false
        var bodyBytes = 0
        var ended = false
        var reset = false
        var resetCode: UInt32? = nil
        var goAway: UInt32? = nil
        var description: String {
            "head \(headAccepted) body \(bodyBytes) ended \(ended) reset \(reset) \(resetCode.map(String.init) ?? "-") goaway \(goAway.map(String.init) ?? "-")"
        }
    }

    /// A server session's view of the stream, and for `rules` the gateway's checks applied as
    /// `HTTP2ServerHandler` applies them.
    final class Recorder {
        var outcome = Outcome()
        var rules = HTTP2RequestRules()
        let usesRules: Bool
        let connectProtocol: Bool
        var refused = false
        var session: OpaquePointer?
        init(usesRules: Bool, connectProtocol: Bool) {
            self.usesRules = usesRules
            self.connectProtocol = connectProtocol
        }

        func refuse(_ id: Int32) {
            self.refused = true
            nghttp2_submit_rst_stream(self.session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, NGHTTP2_PROTOCOL_ERROR.rawValue)
        }
    }

    static func run(_ bytes: [UInt8], connectProtocol: Bool, splits: [Int], rules: Bool) -> Outcome {
        let recorder = Recorder(usesRules: rules, connectProtocol: connectProtocol)
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_header_callback(callbacks, recordHeader)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, recordFrame)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, recordData)
        var option: OpaquePointer?
        nghttp2_option_new(&option)
        defer { nghttp2_option_del(option) }
        nghttp2_option_set_no_auto_window_update(option, 1)
        if rules { nghttp2_option_set_no_http_messaging(option, 1) }
        var session: OpaquePointer?
        let userData = Unmanaged.passUnretained(recorder).toOpaque()
        nghttp2_session_server_new2(&session, callbacks, userData, option)
        defer { nghttp2_session_del(session) }
        recorder.session = session
        var settings = [nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES.rawValue), value: 1)]
        if connectProtocol {
            settings.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL.rawValue), value: 1))
        }
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        var start = 0
        for end in splits + [bytes.count] where end >= start {
            let result = bytes[start..<end].withUnsafeBufferPointer { nghttp2_session_mem_recv(session, $0.baseAddress, $0.count) }
            if result < 0 { recorder.outcome.goAway = UInt32(-result); return recorder.outcome }
            start = end
        }
        // What the session answers: a RST_STREAM on the request's stream, or a GOAWAY.
        var output: [UInt8] = []
        while true {
            var data: UnsafePointer<UInt8>?
            let count = nghttp2_session_mem_send(session, &data)
            if count <= 0 { break }
            output += UnsafeBufferPointer(start: data, count: count)
        }
        var index = 0
        while index + 9 <= output.count {
            let length = Int(output[index]) << 16 | Int(output[index + 1]) << 8 | Int(output[index + 2])
            let type = output[index + 3]
            let payload = index + 9
            func word(_ at: Int) -> UInt32 { output[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
            if type == 3 && recorder.outcome.resetCode == nil {  // RST_STREAM: the first one's code
                recorder.outcome.reset = true
                recorder.outcome.resetCode = word(payload)
            } else if type == 7 {  // GOAWAY
                recorder.outcome.goAway = word(payload + 4)
            }
            index = payload + length
        }
        return recorder.outcome
    }

    // MARK: - Encoding

    /// The client's bytes for `request` on stream 1.
    static func encode(_ request: Request) -> [UInt8] {
        var bytes = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
        bytes += Self.frame(type: 4, flags: 0, stream: 0, payload: [])  // SETTINGS
        var deflater: OpaquePointer?
        nghttp2_hd_deflate_new(&deflater, 4096)
        defer { nghttp2_hd_deflate_del(deflater) }
        let headEnds = request.endOnHeaders && request.data.isEmpty && request.trailers == nil
        bytes += Self.frame(type: 1, flags: 0x4 | (headEnds ? 0x1 : 0), stream: 1, payload: Self.block(request.fields, deflater))
        if headEnds { return bytes }
        for (number, count) in request.data.enumerated() {
            let last = number == request.data.count - 1
            let ends = last && request.endOnData && request.trailers == nil
            bytes += Self.frame(type: 0, flags: ends ? 0x1 : 0, stream: 1, payload: Array(repeating: UInt8(ascii: "x"), count: count))
        }
        if let trailers = request.trailers {
            bytes += Self.frame(type: 1, flags: 0x4 | (request.trailersEnd ? 0x1 : 0), stream: 1, payload: Self.block(trailers, deflater))
        }
        return bytes
    }

    static func frame(type: UInt8, flags: UInt8, stream: UInt32, payload: [UInt8]) -> [UInt8] {
        let length = payload.count
        return [UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type, flags,
                UInt8(stream >> 24 & 0x7F), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream & 0xFF)] + payload
    }

    /// An HPACK block for `fields` exactly as given (no case folding, no checks).
    static func block(_ fields: [Field], _ deflater: OpaquePointer?) -> [UInt8] {
        var storage = fields.map { (name: $0.name + [0], value: $0.value + [0]) }
        return storage.withUnsafeMutableBufferPointer { storage in
            var nva = storage.indices.map { index in
                storage[index].name.withUnsafeMutableBufferPointer { name in
                    storage[index].value.withUnsafeMutableBufferPointer { value in
                        nghttp2_nv(name: name.baseAddress, value: value.baseAddress, namelen: name.count - 1, valuelen: value.count - 1,
                                   flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
                    }
                }
            }
            let bound = nghttp2_hd_deflate_bound(deflater, &nva, nva.count)
            var out = [UInt8](repeating: 0, count: bound)
            let written = nghttp2_hd_deflate_hd(deflater, &out, out.count, &nva, nva.count)
            precondition(written >= 0)
            return Array(out[0..<written])
        }
    }

    // MARK: - Generating

    static let methods = ["GET", "POST", "HEAD", "CONNECT", "OPTIONS", "DELETE", "", "G T", "get", "GET\u{0}"]
    static let paths = ["/", "/a?b=1", "*", "", "a", "/a b", "/a\u{7f}", "//x", "/%zz", "/\u{e9}", "http://a/"]
    static let schemes = ["https", "http", "HTTP", "ftp", "", "1x", "h+t.x-", "ht tp", "wss"]
    static let authorities = ["a.example", "", "a b", "a/b", "[::1]:443", "u@h", "a\u{0}", "a:443", "A.EXAMPLE", "a\"b"]
    static let names = [
        "accept", "x-a", "content-length", "te", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
        "upgrade", "host", "cookie", "priority", "X-Upper", "x@y", "", "x y", "x-\u{80}", "content-Length", ":path",
        ":method", ":scheme", ":authority", ":protocol", ":status", ":", ":Path", "x-request-id", "authorization",
    ]
    static let values = [
        "v", "", " v", "v ", "\tv", "a\u{0}b", "a\rb", "a\nb", "trailers", "Trailers", "gzip", "10", "0", "5", "+1", "1 ",
        "-1", "99999999999999999999", "u=1, i", "u=9", "i=?0", "u=1;x", "\u{7f}", "\u{80}\u{ff}", "a.example", "/", "GET",
        "websocket", "a\tb", "close",
    ]

    static let commonNames = ["accept", "x-a", "cookie", "x-request-id", "authorization", "priority", "user-agent", "te"]
    static let commonValues = ["v", "", "a.example", "u=1, i", "10", "a\tb", "trailers", "*/*", "Bearer x.y.z"]

    static func pick<T>(_ list: [T], _ random: inout SplitMix64) -> T { list[Int.random(in: 0..<list.count, using: &random)] }

    static func generate(_ random: inout SplitMix64) -> Request {
        // Mostly well-formed heads, so mutations land near the edge of the rules.
        let method = Int.random(in: 0..<4, using: &random) == 0 ? Self.pick(Self.methods, &random) : Self.pick(["GET", "POST", "CONNECT"], &random)
        var fields: [Field] = [Self.field(":method", method)]
        if method != "CONNECT" || Bool.random(using: &random) {
            fields.append(Self.field(":scheme", Int.random(in: 0..<4, using: &random) == 0 ? Self.pick(Self.schemes, &random) : "https"))
            fields.append(Self.field(":path", Int.random(in: 0..<4, using: &random) == 0 ? Self.pick(Self.paths, &random) : "/a"))
        }
        if Int.random(in: 0..<8, using: &random) != 0 {
            fields.append(Self.field(":authority", Int.random(in: 0..<4, using: &random) == 0 ? Self.pick(Self.authorities, &random) : "a.example"))
        }
        if method == "CONNECT" && Bool.random(using: &random) { fields.append(Self.field(":protocol", "websocket")) }
        fields.shuffle(using: &random)
        var contentLength: Int? = nil
        if Int.random(in: 0..<3, using: &random) == 0 {
            contentLength = Int.random(in: 0...8, using: &random)
            fields.append(Self.field("content-length", String(contentLength!)))
        }
        for _ in 0..<Int.random(in: 0...4, using: &random) {
            if Int.random(in: 0..<4, using: &random) == 0 {
                fields.append(Self.field(Self.pick(Self.names, &random), Self.pick(Self.values, &random)))
            } else {
                fields.append(Self.field(Self.pick(Self.commonNames, &random), Self.pick(Self.commonValues, &random)))
            }
        }
        // Mutations, in half the cases: a byte inserted, a letter raised, a field repeated,
        // dropped or moved.
        for _ in 0..<(Bool.random(using: &random) ? 0 : Int.random(in: 1...2, using: &random)) where !fields.isEmpty {
            let index = Int.random(in: 0..<fields.count, using: &random)
            switch Int.random(in: 0..<6, using: &random) {
            case 0:
                let byte = Self.pick([0x00, 0x09, 0x0A, 0x0D, 0x20, 0x3A, 0x7F, 0x80, 0x41, 0x2C] as [UInt8], &random)
                if Bool.random(using: &random) {
                    fields[index].name.insert(byte, at: Int.random(in: 0...fields[index].name.count, using: &random))
                } else {
                    fields[index].value.insert(byte, at: Int.random(in: 0...fields[index].value.count, using: &random))
                }
            case 1:
                if let letter = fields[index].name.firstIndex(where: { $0 >= 0x61 && $0 <= 0x7A }) { fields[index].name[letter] -= 0x20 }
            case 2:
                fields.insert(fields[index], at: Int.random(in: 0...fields.count, using: &random))
            case 3:
                fields.remove(at: index)
            case 4:
                let field = fields.remove(at: index)
                fields.insert(field, at: Int.random(in: 0...fields.count, using: &random))
            default:
                fields[index].value = Array(Self.pick(Self.values, &random).utf8)
            }
        }
        var request = Request(fields: fields, connectProtocol: Int.random(in: 0..<4, using: &random) != 0)
        let declared = contentLength ?? Int.random(in: 0...6, using: &random)
        switch Int.random(in: 0..<4, using: &random) {
        case 0:
            request.endOnHeaders = true
        case 1:
            request.data = [declared]
        default:
            let total = max(0, declared + Int.random(in: -2...2, using: &random))
            let first = Int.random(in: 0...total, using: &random)
            request.data = [first, total - first]
            request.endOnData = Int.random(in: 0..<6, using: &random) != 0
        }
        if !request.endOnHeaders && Int.random(in: 0..<5, using: &random) == 0 {
            var trailers = [Self.field(Self.pick(Self.names, &random), Self.pick(Self.values, &random))]
            if Bool.random(using: &random) { trailers.append(Self.field("x-t", "1")) }
            request.trailers = trailers
            request.trailersEnd = Int.random(in: 0..<5, using: &random) != 0
        }
        return request
    }
}

private func recorder(_ userData: UnsafeMutableRawPointer?) -> HTTP2RequestRulesDifferentialTests.Recorder {
    Unmanaged<HTTP2RequestRulesDifferentialTests.Recorder>.fromOpaque(userData!).takeUnretainedValue()
}

private let recordHeader: nghttp2_on_header_callback = { _, frame, name, nameLength, value, valueLength, _, userData in
    let recorder = recorder(userData)
    guard let frame, let name, let value, !recorder.refused else { return 0 }
    let nameBytes = UnsafeBufferPointer(start: name, count: nameLength), valueBytes = UnsafeBufferPointer(start: value, count: valueLength)
    if recorder.usesRules {
        let trailer = frame.pointee.headers.cat != NGHTTP2_HCAT_REQUEST
        guard recorder.rules.field(name: nameBytes, value: valueBytes, trailer: trailer, connectProtocol: recorder.connectProtocol) != nil else {
            recorder.refuse(frame.pointee.hd.stream_id)
            return Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
    }
    recorder.outcome.fields.append((Array(nameBytes), Array(valueBytes)))
    return 0
}

private let recordFrame: nghttp2_on_frame_recv_callback = { _, frame, userData in
    let recorder = recorder(userData)
    guard let frame, !recorder.refused else { return 0 }
    let endStream = frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
    let id = frame.pointee.hd.stream_id
    switch UInt32(frame.pointee.hd.type) {
    case NGHTTP2_HEADERS.rawValue where frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST:
        if recorder.usesRules && !recorder.rules.headEnded(endStream: endStream) { recorder.refuse(id); return 0 }
        recorder.outcome.headAccepted = true
        if endStream { recorder.outcome.ended = true }
    case NGHTTP2_HEADERS.rawValue:
        if recorder.usesRules && !recorder.rules.trailersEnded(endStream: endStream) { recorder.refuse(id); return 0 }
        if endStream { recorder.outcome.ended = true }
    case NGHTTP2_DATA.rawValue where endStream:
        if recorder.usesRules && !recorder.rules.streamEnded() { recorder.refuse(id); return 0 }
        recorder.outcome.ended = true
    default:
        break
    }
    return 0
}

private let recordData: nghttp2_on_data_chunk_recv_callback = { _, _, streamID, _, length, userData in
    let recorder = recorder(userData)
    guard !recorder.refused else { return 0 }
    if recorder.usesRules && !recorder.rules.bodyReceived(count: length) { recorder.refuse(streamID); return 0 }
    recorder.outcome.bodyBytes += length
    return 0
}
