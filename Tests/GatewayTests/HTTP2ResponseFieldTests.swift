import CNGHTTP2
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import Gateway

/// The HTTP/2 response field rule as the codec applies it, byte by byte into its scratch memory,
/// and the header blocks that come out of that memory, decoded with nghttp2's own HPACK inflater.
@Suite("HTTP/2 response fields")
struct HTTP2ResponseFieldTests {
    static func copied(_ name: String, _ value: String) -> (String, String)? {
        let scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: name.utf8.count + value.utf8.count + 1)
        defer { scratch.deallocate() }
        guard let nameCount = HTTP2ResponseField.copyName(name, to: scratch),
            let valueCount = HTTP2ResponseField.copyValue(value, to: scratch + nameCount)
        else { return nil }
        return (
            String(decoding: UnsafeBufferPointer(start: scratch, count: nameCount), as: UTF8.self),
            String(decoding: UnsafeBufferPointer(start: scratch + nameCount, count: valueCount), as: UTF8.self)
        )
    }

    @Test(arguments: [
        ("Content-Type", "text/plain", "content-type", "text/plain"),
        ("X-A", " \t padded both ends \t ", "x-a", "padded both ends"),
        ("x-a", "inner  spaces\tkept", "x-a", "inner  spaces\tkept"),
        ("x-empty", " \t ", "x-empty", ""),
        ("x-a", "caf\u{E9}", "x-a", "caf\u{E9}"),
        ("Tee", "v", "tee", "v"),
    ])
    func keptFieldsAreLoweredAndTrimmed(name: String, value: String, expectedName: String, expectedValue: String) {
        let field = Self.copied(name, value)
        #expect(field?.0 == expectedName)
        #expect(field?.1 == expectedValue)
    }

    @Test(arguments: [
        ("TE", "trailers"), ("Connection", "close"), ("Transfer-Encoding", "chunked"), ("KEEP-ALIVE", "5"),
        ("Proxy-Connection", "x"), ("Upgrade", "h2c"), (":status", "200"), ("x a", "v"), ("", "v"),
        ("x-a", "a\u{1}b"), ("x-a", "a\rb"), ("x-a", "v\r\n"), ("x-a", "a\u{7F}"), ("x-a", " \u{0} "),
    ])
    func refusedFieldsAreDropped(name: String, value: String) {
        #expect(Self.copied(name, value) == nil)
    }

    /// An upstream head's names skip the checks (the strict grammar made them tokens, the rewrite
    /// dropped connection-specific ones) but must come out exactly as the checked copy makes them.
    @Test func checkedLinesAreLoweredAsTheCheckedCopyLowersThem() {
        let tokenBytes = (0...255).map(UInt8.init).filter(isHTTPTokenByte)
        var names = tokenBytes.map { "X-" + String(decoding: [$0], as: UTF8.self) } + ["Content-Type", "SERVER", "date", "X-Z_a~9"]
        // Every length up to five words (the word-at-a-time copy and its overlapping last word),
        // each token byte at each position of a word.
        var random = SplitMix64(seed: 0x4C4F_5745_52)
        for length in 1...40 {
            for _ in 0..<40 {
                names.append(String(decoding: (0..<length).map { _ in tokenBytes.randomElement(using: &random)! }, as: UTF8.self))
            }
        }
        for byte in tokenBytes {
            for position in 0..<9 {
                var bytes = Array("abcdefghi".utf8)
                bytes[position] = byte
                names.append(String(decoding: bytes, as: UTF8.self))
            }
        }
        let scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: 64)
        let checked = UnsafeMutablePointer<UInt8>.allocate(capacity: 64)
        defer { scratch.deallocate(); checked.deallocate() }
        for name in names {
            let count = name.withUTF8Bytes { HTTP2ResponseField.copyLowercased($0, to: scratch) }
            // copyName drops connection-specific names; a random name is rarely one.
            guard let expected = HTTP2ResponseField.copyName(name, to: checked) else { continue }
            #expect(expected == count, "\(name)")
            #expect(Array(UnsafeBufferPointer(start: scratch, count: count)) == Array(UnsafeBufferPointer(start: checked, count: count)), "\(name)")
        }
    }

    /// Decodes HEADERS payloads as a client does, with one dynamic table for the connection.
    final class HeaderDecoder {
        private var inflater: OpaquePointer?

        init() {
            _ = nghttp2_hd_inflate_new(&self.inflater)
        }

        deinit {
            nghttp2_hd_inflate_del(self.inflater)
        }

        func decode(_ block: [UInt8]) -> [(String, String)]? {
            var fields: [(String, String)] = []
            let ok = block.withUnsafeBufferPointer { buffer -> Bool in
                var input = buffer.baseAddress!
                var remaining = buffer.count
                while true {
                    var field = nghttp2_nv()
                    var flags: Int32 = 0
                    let used = nghttp2_hd_inflate_hd2(self.inflater, &field, &flags, input, remaining, 1)
                    if used < 0 { return false }
                    input += used
                    remaining -= used
                    if flags & Int32(NGHTTP2_HD_INFLATE_EMIT.rawValue) != 0 {
                        fields.append((
                            String(decoding: UnsafeBufferPointer(start: field.name, count: field.namelen), as: UTF8.self),
                            String(decoding: UnsafeBufferPointer(start: field.value, count: field.valuelen), as: UTF8.self)
                        ))
                    }
                    if flags & Int32(NGHTTP2_HD_INFLATE_FINAL.rawValue) != 0 {
                        nghttp2_hd_inflate_end_headers(self.inflater)
                        return true
                    }
                    if flags & Int32(NGHTTP2_HD_INFLATE_EMIT.rawValue) == 0 && remaining == 0 { return false }
                }
            }
            return ok ? fields : nil
        }
    }

    /// Fields whose value is new on (nearly) every response go out never indexed; the rest, and
    /// names that merely resemble those (another length, a prefix), are left to the HPACK table.
    @Test(arguments: [
        ("x-request-id", true), ("ratelimit-remaining", true), ("ratelimit-reset", true), ("traceparent", true),
        ("retry-after", true), ("last-modified", true), ("ratelimit-limit", false), ("date", false),
        ("content-type", false), ("strict-transport-security", false), ("x-request-ids", false), ("x-request-i", false),
        ("access-control-allow-origin", false),
    ])
    func perResponseFieldsAreNeverIndexed(_ name: String, _ changes: Bool) {
        let decided = name.withUTF8Bytes { HTTP2ResponseField.changesPerResponse($0) }
        #expect(decided == changes)
    }

    /// Responses of growing and shrinking heads on one connection: each HEADERS frame carries its
    /// own fields and nothing left in the scratch memory by a previous one. (A field with control
    /// bytes no longer gets this far: the upstream response parser refuses the whole response.)
    @Test func scratchMemoryServesHeadsOfAnySize() throws {
        let h = try HTTP2StreamTests.Harness()
        let decoder = HeaderDecoder()
        let long = String(repeating: "v", count: 3000)
        let heads: [[(String, String)]] = [
            [("content-length", "2"), ("X-Short", "a")],
            [("content-length", "2"), ("X-Long", long), ("Server", "sloppy "), ("X-Ok", "ok\t")],
            [("content-length", "2")],
        ]
        for (index, fields) in heads.enumerated() {
            let stream = UInt32(2 * index + 1)
            let upstream = try h.pooledUpstream()
            h.headers(stream: stream, method: "GET", path: "/api/r\(index)", endStream: true)
            _ = h.output()
            let head = HTTPResponseHead(version: .http1_1, status: .created, headers: HTTPHeaders(fields))
            try upstream.answer(head, body: "ok")
            let frames = h.output()
            let block = try #require(frames.first { $0.type == 1 && $0.stream == stream })
            let decoded = try #require(decoder.decode(block.payload), "HEADERS of stream \(stream) do not decode")
            let names = decoded.map(\.0)
            #expect(decoded.first.map { $0 == (":status", "201") } == true)
            #expect(names.allSatisfy { $0 == $0.lowercased() })
            #expect(names.contains("x-request-id"))
            switch index {
            case 0:
                #expect(decoded.contains { $0 == ("x-short", "a") })
                #expect(!names.contains("x-long"))
            case 1:
                #expect(decoded.contains { $0 == ("x-long", long) })
                #expect(decoded.contains { $0 == ("server", "sloppy") })
                #expect(decoded.contains { $0 == ("x-ok", "ok") })
                #expect(!names.contains("x-short"))
            default:
                #expect(!names.contains("x-long") && !names.contains("server") && !names.contains("x-short"))
            }
            #expect(HTTP2StreamTests.body(frames, stream: stream) == "ok")
        }
    }

    /// Heads submitted while the client cannot take them wait inside nghttp2, which reads their
    /// fields only when it sends them: each must still carry its own fields then, whether its bytes
    /// were kept for it (the first ones) or copied by nghttp2 (once the kept memory is full).
    @Test func headsWaitingForTheClientKeepTheirOwnFields() throws {
        let h = try HTTP2StreamTests.Harness()
        let decoder = HeaderDecoder()
        // Large enough that the kept memory fills part-way through the batch.
        let filler = String(repeating: "f", count: 1500)
        let streams = (0..<16).map { UInt32(2 * $0 + 1) }
        let upstreams = try streams.map { _ in try h.pooledUpstream() }
        for stream in streams { h.headers(stream: stream, method: "GET", path: "/api/w\(stream)", endStream: true) }
        h.loop.run()
        _ = h.output()
        h.channel.isWritable = false
        h.channel.pipeline.fireChannelWritabilityChanged()  // as a socket channel does when it flips
        for (stream, upstream) in zip(streams, upstreams) {
            let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: [
                "content-length": "2", "x-stream": "\(stream)", "x-filler": "\(stream)-\(filler)",
            ])
            try upstream.answer(head, body: "ok")
        }
        h.loop.run()
        #expect(h.output().isEmpty, "written to a socket that is not writable")
        h.channel.isWritable = true
        h.channel.pipeline.fireChannelWritabilityChanged()
        let frames = h.output()
        // Decoded in the order they were sent: the connection has one HPACK context. Which
        // upstream connection served which stream is the pool's choice, so each head is checked
        // for its own pair of fields, and every upstream's head for having arrived once.
        var tags: [String] = []
        for block in frames where block.type == 1 {
            let decoded = try #require(decoder.decode(block.payload), "HEADERS of stream \(block.stream) do not decode")
            let tag = try #require(decoded.first { $0.0 == "x-stream" }?.1, "stream \(block.stream): \(decoded.map(\.0))")
            #expect(decoded.contains { $0 == ("x-filler", "\(tag)-\(filler)") }, "stream \(block.stream)")
            tags.append(tag)
        }
        #expect(tags.sorted() == streams.map { "\($0)" }.sorted())
        for stream in streams {
            #expect(HTTP2StreamTests.body(frames, stream: stream) == "ok")
        }
    }
}
