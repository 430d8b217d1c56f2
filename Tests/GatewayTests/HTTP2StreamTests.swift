import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import Gateway

/// `HTTP2ServerHandler` and its `HTTP2Stream`s on an `EmbeddedChannel`: raw frames in, raw frames
/// out, the event loop's clock driven by hand. A proxied stream gets a pooled upstream connection
/// that is itself an `EmbeddedChannel`, so what the exchange does upstream can be read back.
@Suite("HTTP/2 stream stalls and floods")
struct HTTP2StreamTests {
    static let idle = TimeAmount.seconds(10)

    /// One client connection and, optionally, one idle upstream connection in the pool.
    final class Harness {
        let loop = EmbeddedEventLoop()
        let channel: EmbeddedChannel
        let services: ConnectionServices
        let runtime: GatewayRuntime
        private var received = ByteBuffer()
        var upstream: EmbeddedChannel?
        let handler: HTTP2ServerHandler

        /// - Parameter clock: the handler's clock; by default the loop's.
        init(settings: HTTP2Settings = HTTP2Settings(), clock: ((EmbeddedEventLoop) -> NIODeadline)? = nil) throws {
            let config = try ConfigFixture().parse(minimalYAML + """
                timeouts: { idle: 10s }
                upstreams:
                  booking: { endpoints: [127.0.0.1:3001], connect_timeout: 1h }
                routes:
                  - { name: api, match: { path_prefix: /api/ }, upstream: booking }
                """)
            self.runtime = try GatewayBuilder.runtime(config, configHash: "test")
            self.services = ConnectionServices(
                holder: RuntimeHolder(self.runtime), listener: ListenerInfo(name: "public", role: .proxy, isTLS: false),
                loop: LoopResources(eventLoop: self.loop), observability: Observability(accessLog: false)
            )
            self.channel = EmbeddedChannel(loop: self.loop)
            let loop = self.loop
            self.handler = HTTP2ServerHandler(services: self.services, settings: settings, clock: { clock?(loop) ?? loop.now })
            try self.channel.pipeline.syncOperations.addHandler(self.handler)
            try self.channel.connect(to: SocketAddress(ipAddress: "203.0.113.7", port: 40000)).wait()
            // Preface, empty SETTINGS, and the ACK of the gateway's SETTINGS (its 256 KiB stream
            // window applies from then on).
            self.send(
                Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + Self.frame(type: 4, flags: 0, stream: 0)
                    + Self.frame(type: 4, flags: 1, stream: 0)
            )
        }

        /// Puts an idle keep-alive connection to `booking` in this loop's pool.
        func poolUpstream() throws {
            self.upstream = try self.pooledUpstream()
        }

        /// Another idle keep-alive connection to `booking` in the pool, returned for the test to drive.
        func pooledUpstream() throws -> EmbeddedChannel {
            let cluster = self.runtime.clusters["booking"]!
            let upstream = EmbeddedChannel(loop: self.loop)
            let handler = UpstreamConnectionHandler()
            try upstream.pipeline.syncOperations.addHandler(handler)
            try upstream.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3001)).wait()
            let connection = UpstreamConnection(channel: upstream, handler: handler, endpoint: cluster.endpoints[0], timers: self.services.loop.timers)
            self.services.loop.pool.release(connection, reusable: true, timeouts: cluster.timeouts)
            return upstream
        }

        static func frame(type: UInt8, flags: UInt8, stream: UInt32, _ payload: [UInt8] = []) -> [UInt8] {
            var bytes: [UInt8] = []
            for shift in [16, 8, 0] { bytes.append(UInt8(truncatingIfNeeded: payload.count >> shift)) }
            bytes.append(type)
            bytes.append(flags)
            for shift in [24, 16, 8, 0] { bytes.append(UInt8(truncatingIfNeeded: stream >> UInt32(shift))) }
            bytes[5] &= 0x7F
            return bytes + payload
        }

        /// A header block of literal fields without indexing (RFC 7541 §6.2.2), no Huffman.
        static func block(_ fields: [(String, String)]) -> [UInt8] {
            var bytes: [UInt8] = []
            for (name, value) in fields {
                bytes.append(0x00)
                bytes.append(UInt8(name.utf8.count))
                bytes.append(contentsOf: name.utf8)
                bytes.append(UInt8(value.utf8.count))
                bytes.append(contentsOf: value.utf8)
            }
            return bytes
        }

        func send(_ bytes: [UInt8]) {
            _ = try? self.channel.writeInbound(ByteBuffer(bytes: bytes))
        }

        func headers(stream: UInt32, method: String = "POST", path: String, endStream: Bool, extra: [(String, String)] = []) {
            let fields = [(":method", method), (":scheme", "http"), (":authority", "localhost"), (":path", path)] + extra
            self.send(Self.frame(type: 1, flags: endStream ? 0x05 : 0x04, stream: stream, Self.block(fields)))
        }

        func data(stream: UInt32, count: Int, endStream: Bool = false) {
            self.send(Self.frame(type: 0, flags: endStream ? 0x01 : 0, stream: stream, Array(repeating: 0x75, count: count)))
        }

        struct Frame {
            var type: UInt8
            var flags: UInt8
            var stream: UInt32
            var payload: [UInt8]
            /// RST_STREAM and GOAWAY error code.
            var errorCode: UInt32? {
                switch self.type {
                case 3 where self.payload.count == 4: UInt32(self.payload[0]) << 24 | UInt32(self.payload[1]) << 16 | UInt32(self.payload[2]) << 8 | UInt32(self.payload[3])
                case 7 where self.payload.count >= 8: UInt32(self.payload[4]) << 24 | UInt32(self.payload[5]) << 16 | UInt32(self.payload[6]) << 8 | UInt32(self.payload[7])
                default: nil
                }
            }
        }

        /// Frames written since the last call, once the tick's queued work (the coalesced drain)
        /// has run.
        func output() -> [Frame] {
            self.loop.run()
            self.collectWrites()
            return self.frames()
        }

        /// Moves what the handler wrote into `received`, and says in how many writes it came.
        @discardableResult
        func collectWrites() -> Int {
            var writes = 0
            while let buffer = try? self.channel.readOutbound(as: ByteBuffer.self) {
                var buffer = buffer
                if buffer.readableBytes > 0 { writes += 1 }
                self.received.writeBuffer(&buffer)
            }
            return writes
        }

        /// Complete frames in `received`.
        func frames() -> [Frame] {
            var frames: [Frame] = []
            while self.received.readableBytes >= 9 {
                let bytes = self.received.getBytes(at: self.received.readerIndex, length: 9)!
                let length = Int(bytes[0]) << 16 | Int(bytes[1]) << 8 | Int(bytes[2])
                guard self.received.readableBytes >= 9 + length else { break }
                self.received.moveReaderIndex(forwardBy: 9)
                let stream = UInt32(bytes[5] & 0x7F) << 24 | UInt32(bytes[6]) << 16 | UInt32(bytes[7]) << 8 | UInt32(bytes[8])
                frames.append(Frame(type: bytes[3], flags: bytes[4], stream: stream, payload: self.received.readBytes(length: length)!))
            }
            return frames
        }

        func advance(_ amount: TimeAmount) {
            self.loop.advanceTime(by: amount)
        }

        /// What the exchange wrote upstream since the last call.
        func upstreamWritten() -> String {
            self.upstream?.writtenText() ?? ""
        }
    }

    static func body(_ frames: [Harness.Frame], stream: UInt32) -> String {
        String(decoding: frames.filter { $0.type == 0 && $0.stream == stream }.flatMap(\.payload), as: UTF8.self)
    }

    /// A stream object is reused for a later stream with `reuse(id:)`, which resets `data` whole:
    /// any stored property beside it would carry one request's data into the next.
    @Test func aStreamKeepsItsRequestDataInOneValue() throws {
        let harness = try Harness()
        let handler = try harness.channel.pipeline.syncOperations.handler(type: HTTP2ServerHandler.self)
        let stream = HTTP2Stream(id: 1, connection: handler)
        #expect(Mirror(reflecting: stream).children.compactMap(\.label).sorted() == ["connection", "data", "id"])
    }

    /// The upstream gets one `Host`: `:authority`'s value when the request has one (a `host`
    /// field beside it is dropped), else the `host` field's (a second one resets the stream).
    @Test(arguments: [
        ([(":authority", "a.example"), (":path", "/api/x"), ("host", "b.example")], "a.example"),
        ([(":path", "/api/x"), ("host", "b.example")], "b.example"),
        ([(":path", "/api/x"), ("accept", "*/*"), ("host", "b.example")], "b.example"),
    ])
    func upstreamHostIsTheAuthorityOrElseTheHostField(_ fields: [(String, String)], _ expected: String) throws {
        let h = try Harness()
        try h.poolUpstream()
        h.send(Harness.frame(type: 1, flags: 0x05, stream: 1, Harness.block([(":method", "GET"), (":scheme", "http")] + fields)))
        _ = h.output()
        let lines = h.upstreamWritten().split(separator: "\r\n")
        #expect(lines.first == "GET /api/x HTTP/1.1")
        #expect(lines.filter { $0.lowercased().hasPrefix("host:") } == ["host: \(expected)"])
    }

    /// What `RequestValidator.inspect` reads from an HTTP/2 request's fields once nghttp2 and the
    /// stream's rules passed them: the first request id, one trace, a length of up to 18 digits
    /// (the rules take any Int64), an absolute path without dot segments.
    @Test(arguments: [
        // The first `x-request-id` is the request's; one valid `traceparent` carries the trace.
        ("GET", "/nowhere", [("x-request-id", "first-id"), ("x-request-id", "second-id"), ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
         [#""request_id":"first-id""#, #""trace_id":"0af7651916cd43dd8448eb211c80319c""#], ["second-id"]),
        // Two `traceparent` fields are no trace: a new one is started.
        ("GET", "/nowhere", [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
         [#""code":"not_found""#], ["0af7651916cd43dd8448eb211c80319c"]),
        // nghttp2's rules take any Int64 length; inspect's decimal stops at 18 digits.
        ("POST", "/api/x", [("content-length", "1000000000000000000")], ["invalid Content-Length"], []),
        ("POST", "/api/x", [("content-length", "999999999999999999")], [#""code":"payload_too_large""#], []),
        ("OPTIONS", "*", [], ["request target must be an absolute path"], []),
        ("GET", "/api/%2e%2e/admin", [], [#""code":"bad_request""#], []),
    ])
    func theStreamReadsItsFieldsAsInspectWould(_ method: String, _ path: String, _ extra: [(String, String)], _ expected: [String], _ absent: [String]) throws {
        let h = try Harness()
        try h.poolUpstream()
        h.headers(stream: 1, method: method, path: path, endStream: method == "GET" || method == "OPTIONS", extra: extra)
        let body = Self.body(h.output(), stream: 1)
        for text in expected { #expect(body.contains(text), "\(body)") }
        for text in absent { #expect(!body.contains(text), "\(body)") }
        #expect(h.upstreamWritten().isEmpty)
    }

    /// A trailer section is a field section of its own (RFC 9113 §8.1): held to
    /// `max_header_list_size` by itself, and over it the stream is reset (the request is already
    /// on its way upstream, which is dropped with it).
    @Test(arguments: [(600, false), (1200, true)])
    func trailersAreHeldToTheHeaderListSize(_ trailerBytes: Int, _ reset: Bool) throws {
        var settings = HTTP2Settings()
        settings.maxHeaderListSize = 1024
        let h = try Harness(settings: settings)
        try h.poolUpstream()
        // A head of ~850 counted bytes: with the trailers, more than the limit either way.
        h.headers(stream: 1, path: "/api/upload", endStream: false, extra: (0..<5).map { ("x-h\($0)", String(repeating: "h", count: 100)) })
        h.data(stream: 1, count: 10)
        #expect(h.upstreamWritten().hasPrefix("POST /api/upload HTTP/1.1\r\n"))
        let fields = (0..<(trailerBytes / 100)).map { ("x-t\($0)", String(repeating: "t", count: 64)) }
        h.send(Harness.frame(type: 1, flags: 0x05, stream: 1, Harness.block(fields)))
        let frames = h.output()
        #expect(frames.contains { $0.type == 3 && $0.stream == 1 && $0.errorCode == 1 } == reset, "\(frames.map(\.type))")
        #expect(h.upstream?.isActive == !reset)
        if !reset { #expect(h.upstreamWritten().hasSuffix("0\r\n\r\n"), "the request ended upstream") }
    }

    /// A malformed request is reset, not answered, but logged and counted as the 400 it is:
    /// refused while its head arrives (no record yet), or once its body breaks its
    /// `content-length` (the request already on its way upstream).
    @Test func refusedStreamsAreCountedAs400() throws {
        let h = try Harness()
        try h.poolUpstream()
        h.headers(stream: 1, method: "GET", path: "/api/x", endStream: true, extra: [("X-Upper", "1")])
        h.headers(stream: 3, path: "/api/upload", endStream: false, extra: [("content-length", "5")])
        h.data(stream: 3, count: 6, endStream: true)
        let frames = h.output()
        #expect(frames.filter { $0.type == 3 && $0.errorCode == 1 }.map(\.stream) == [1, 3])
        let text = h.services.observability.metrics.render()
        #expect(text.contains(#"gateway_requests_total{route="-",method="GET",status="400",protocol="HTTP/2",source="gateway:bad_request"} 1"#), "\(text)")
        #expect(text.contains(#"gateway_requests_total{route="api",method="POST",status="400",protocol="HTTP/2",source="gateway:bad_request"} 1"#), "\(text)")
    }

    @Test func stalledUploadIsAnswered408AndItsUpstreamConnectionClosed() throws {
        let h = try Harness()
        try h.poolUpstream()
        h.headers(stream: 1, path: "/api/upload", endStream: false, extra: [("content-length", "100000")])
        h.data(stream: 1, count: 1000)
        #expect(h.upstreamWritten().hasPrefix("POST /api/upload HTTP/1.1\r\n"), "the request went upstream")
        _ = h.output()

        h.advance(.seconds(6))
        h.data(stream: 1, count: 1000)  // progress: the stall clock starts over
        h.advance(.seconds(9))
        #expect(h.output().filter { $0.stream == 1 && ($0.type == 1 || $0.type == 3) }.isEmpty, "answered before timeouts.idle")
        #expect(h.upstream?.isActive == true)

        h.advance(.seconds(2))
        let frames = h.output()
        #expect(frames.contains { $0.type == 1 && $0.stream == 1 }, "no response HEADERS: \(frames.map(\.type))")
        #expect(Self.body(frames, stream: 1).contains(#""code":"request_timeout""#))
        // The body the client never finished is refused without error once the 408 is out.
        #expect(frames.contains { $0.type == 3 && $0.stream == 1 && $0.errorCode == 0 })
        // The exchange was cancelled: its upstream connection, holding half a request, is closed.
        #expect(h.upstream?.isActive == false)
        // Its only stream stalled: the connection is sent away.
        #expect(frames.contains { $0.type == 7 })
    }

    @Test func timeTheGatewayHoldsTheBodyBackDoesNotCount() throws {
        let h = try Harness()
        try h.poolUpstream()
        let upstream = try #require(h.upstream)
        h.headers(stream: 1, path: "/api/upload", endStream: false, extra: [("content-length", "1000000")])
        // The upstream stops taking the body: the client's window is not given back, and once the
        // client used it up it is waiting on the gateway.
        upstream.isWritable = false
        upstream.pipeline.fireChannelWritabilityChanged()
        for _ in 0..<16 { h.data(stream: 1, count: 16384) }
        _ = h.output()
        h.advance(.seconds(35))
        #expect(h.output().filter { $0.stream == 1 && ($0.type == 1 || $0.type == 3) }.isEmpty, "stalled while held back")
        #expect(upstream.isActive)

        // The upstream takes the body again: the client has timeouts.idle from then on.
        upstream.isWritable = true
        upstream.pipeline.fireChannelWritabilityChanged()
        let update = h.output()
        #expect(update.contains { $0.type == 8 }, "no WINDOW_UPDATE after resuming")
        h.advance(.seconds(9))
        #expect(h.output().filter { $0.stream == 1 && ($0.type == 1 || $0.type == 3) }.isEmpty)
        h.advance(.seconds(2))
        #expect(Self.body(h.output(), stream: 1).contains("request_timeout"))
        #expect(!upstream.isActive)
    }

    @Test func aBodyThatStopsWhileTheWindowIsOpenStalls() throws {
        // Paused (the upstream is slow) but the client still has window: its silence is its own.
        let h = try Harness()
        try h.poolUpstream()
        let upstream = try #require(h.upstream)
        h.headers(stream: 1, path: "/api/upload", endStream: false, extra: [("content-length", "1000000")])
        upstream.isWritable = false
        upstream.pipeline.fireChannelWritabilityChanged()
        h.data(stream: 1, count: 100)
        h.advance(.seconds(11))
        #expect(Self.body(h.output(), stream: 1).contains("request_timeout"))
        #expect(!upstream.isActive)
    }

    @Test func responseStartedThenBodyStallsResetsTheStream() throws {
        let h = try Harness()
        try h.poolUpstream()
        let upstream = try #require(h.upstream)
        h.headers(stream: 1, path: "/api/upload", endStream: false, extra: [("content-length", "1000")])
        h.data(stream: 1, count: 10)
        // The upstream answers early (before the whole body), then the client goes quiet.
        let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "100"])
        try upstream.answer(head, body: "partial")
        _ = h.output()
        h.advance(.seconds(11))
        let frames = h.output()
        #expect(frames.contains { $0.type == 3 && $0.stream == 1 && $0.errorCode == 8 }, "no RST_STREAM CANCEL: \(frames.map(\.type))")
        #expect(!upstream.isActive)
    }

    @Test func locallyAnsweredStreamWithAnUnfinishedBodyIsResetWithoutErrorOnceTheBodyStops() throws {
        let h = try Harness()
        h.headers(stream: 1, path: "/nowhere", endStream: false, extra: [("content-length", "100000")])
        // The 404 goes out at once; the client may go on sending the body it announced …
        #expect(h.output().filter { $0.stream == 1 }.map(\.type) == [1, 0])
        h.advance(.seconds(6))
        h.data(stream: 1, count: 1000)
        h.advance(.seconds(9))
        #expect(!h.output().contains { $0.type == 3 || $0.type == 7 })
        // … but not hold the stream open without sending it.
        h.advance(.seconds(2))
        let frames = h.output()
        #expect(frames.contains { $0.type == 3 && $0.stream == 1 && $0.errorCode == 0 }, "\(frames.map(\.type))")
        #expect(frames.contains { $0.type == 7 && $0.errorCode == 0 })
    }

    @Test func idleConnectionGoesAwayAndCloses() throws {
        let h = try Harness()
        h.advance(.seconds(9))
        #expect(!h.output().contains { $0.type == 7 })
        h.advance(.seconds(2))
        #expect(h.output().contains { $0.type == 7 && $0.errorCode == 0 })
        h.loop.run()
        #expect(!h.channel.isActive)
    }

    /// The handler's clock is the loop iteration's stamp, which may predate the moment its check
    /// timer fires: the check must still treat its own deadline as reached (re-arming for the time
    /// left would fire again at once, in the same iteration, forever).
    @Test func aCheckFiringAtItsDeadlineActsOnItWhenTheClockReadsEarlier() throws {
        final class Stamp { var value: NIODeadline? }
        let stamp = Stamp()
        let h = try Harness(clock: { loop in stamp.value ?? loop.now })
        // Idle from now: the check is due in timeouts.idle (10 s). The iteration that runs it
        // stamped its start half a second before that.
        stamp.value = h.loop.now + .milliseconds(9_500)
        h.advance(.seconds(11))
        #expect(h.output().contains { $0.type == 7 && $0.errorCode == 0 }, "no GOAWAY once timeouts.idle passed")
    }

    // Empty DATA frames on a stream nghttp2 already closed are dropped before any callback, so
    // these streams stay open (proxied, the upstream waiting for the body).
    @Test func emptyDataFloodGetsEnhanceYourCalm() throws {
        let h = try Harness()
        try h.poolUpstream()
        h.headers(stream: 1, path: "/api/upload", endStream: false)
        h.send((0...100).flatMap { _ in Harness.frame(type: 0, flags: 0, stream: 1) })
        let goAway = h.output().first { $0.type == 7 }
        #expect(goAway?.errorCode == 11, "GOAWAY code \(String(describing: goAway?.errorCode))")
    }

    @Test func responsesFinishedInOneTickLeaveInOneWrite() throws {
        let h = try Harness()
        let upstreams = try (0..<10).map { _ in try h.pooledUpstream() }
        let streams = Array(stride(from: UInt32(1), through: 19, by: 2))
        // Ten requests in one read, each proxied on its own upstream connection.
        h.send(streams.flatMap { stream in
            Harness.frame(type: 1, flags: 0x05, stream: stream, Harness.block([
                (":method", "GET"), (":scheme", "http"), (":authority", "localhost"), (":path", "/api/item/\(stream)"),
            ]))
        })
        _ = h.output()
        var paths: [String] = []
        for upstream in upstreams {
            let requestLine = (upstream.writtenText().split(separator: "\r\n").first ?? "").split(separator: " ")
            guard requestLine.count == 3 else {
                Issue.record("a request did not go upstream")
                return
            }
            paths.append(String(requestLine[1]))
        }
        // Each upstream answers in its own read, all within one tick of the loop.
        for (upstream, path) in zip(upstreams, paths) {
            let body = "answer to \(path)"
            let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "\(body.utf8.count)"])
            try upstream.answer(head, body: body)
        }
        #expect(h.collectWrites() == 0, "written before the end of the tick")
        h.loop.run()
        #expect(h.collectWrites() == 1)
        let frames = h.frames()
        #expect(Set(frames.filter { $0.type == 1 }.map(\.stream)) == Set(streams))
        for stream in streams {
            #expect(Self.body(frames, stream: stream) == "answer to /api/item/\(stream)")
            #expect(frames.contains { $0.type == 0 && $0.stream == stream && $0.flags & 0x01 != 0 })
        }
    }

    /// A client read in the middle of a tick (here a PING) does not drain the connection on its
    /// own: the response an upstream read earlier in the tick produced and the PING's ACK leave
    /// together at the tick's end, in one write (one TLS record, one `write` and one wake-up of
    /// the client instead of two).
    @Test func aClientReadWithinATickLeavesWithTheTicksResponses() throws {
        let h = try Harness()
        let upstream = try h.pooledUpstream()
        h.headers(stream: 1, method: "GET", path: "/api/one", endStream: true)
        _ = h.output()
        let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "2"])
        try upstream.answer(head, body: "ok")
        h.send(Harness.frame(type: 6, flags: 0, stream: 0, Array("pingpong".utf8)))
        #expect(h.collectWrites() == 0, "written before the end of the tick")
        h.loop.run()
        #expect(h.collectWrites() == 1)
        let frames = h.frames()
        #expect(Self.body(frames, stream: 1) == "ok")
        #expect(frames.contains { $0.type == 6 && $0.flags & 0x01 != 0 && $0.payload == Array("pingpong".utf8) })
    }

    @Test func aClientFillingItsConcurrencyGetsItsNextBatchOnReusedStreams() throws {
        let h = try Harness()  // 128 concurrent streams advertised
        let batch = 40
        var nextStream = UInt32(1)
        for round in 0..<2 {
            let upstreams = try (0..<batch).map { _ in try h.pooledUpstream() }
            let streams = (0..<batch).map { _ in defer { nextStream += 2 }; return nextStream }
            h.send(streams.flatMap { stream in
                Harness.frame(type: 1, flags: 0x05, stream: stream, Harness.block([
                    (":method", "GET"), (":scheme", "http"), (":authority", "localhost"), (":path", "/api/item/\(stream)"),
                ]))
            })
            // Round 1 takes its stream objects from the ones round 0 left, all of them.
            #expect(h.handler.spareStreamCount == 0, "round \(round)")
            h.loop.run()  // the requests leave at the end of the tick
            for upstream in upstreams {
                let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "2"])
                try upstream.answer(head, body: "ok")
            }
            h.loop.run()
            _ = h.output()
            // The whole batch closed in one tick: every stream object is kept for the next.
            #expect(h.handler.spareStreamCount == batch, "round \(round)")
        }
    }

    /// A stream holds its connection's handler strongly, and the handler holds its streams (open,
    /// spare, waiting to start): the channel's close breaks every such cycle. A connection that
    /// answered one stream (its object kept as a spare), left one waiting for its upstream and
    /// answered one locally is freed once closed, with its stream objects.
    @Test func aClosedConnectionLeavesNothingHoldingItsHandlerOrStreams() throws {
        weak var handler: HTTP2ServerHandler?
        try {
            let h = try Harness()
            handler = h.handler
            let upstreams = try [h.pooledUpstream(), h.pooledUpstream()]
            h.headers(stream: 1, method: "GET", path: "/api/served", endStream: true)
            h.headers(stream: 3, method: "GET", path: "/api/waiting", endStream: true)
            h.headers(stream: 5, method: "GET", path: "/elsewhere", endStream: true)
            h.loop.run()
            let served = try #require(upstreams.first { $0.writtenText().contains("/api/served") })
            let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "2"])
            try served.answer(head, body: "ok")
            let frames = h.output()
            #expect(Self.body(frames, stream: 1) == "ok")
            #expect(frames.contains { $0.type == 1 && $0.stream == 5 })
            #expect(h.handler.spareStreamCount == 2)
            try h.channel.close().wait()
            h.loop.run()  // what the close queued (the waiting exchange's upstream close)
        }()
        #expect(handler == nil, "a closed connection's handler is still held")
    }

    /// Bytes after a response that no request asked for (here a second response in the same
    /// read): the connection is closed, not pooled, where the next request would take them for
    /// its answer.
    @Test func anUpstreamThatAnswersTwiceIsNotReused() throws {
        let h = try Harness()
        let upstream = try h.pooledUpstream()
        h.headers(stream: 1, method: "GET", path: "/api/one", endStream: true)
        h.loop.run()
        let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "2"])
        try upstream.answer(head, body: "ok" + "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nunasked")
        h.loop.run()
        #expect(Self.body(h.output(), stream: 1) == "ok")
        #expect(!upstream.isActive)
    }

    @Test func aDrainTheClientCannotTakeWaitsForWritability() throws {
        let h = try Harness()
        let upstream = try h.pooledUpstream()
        h.headers(stream: 1, method: "GET", path: "/api/big", endStream: true)
        _ = h.output()
        h.channel.isWritable = false
        h.channel.pipeline.fireChannelWritabilityChanged()  // as a socket channel does when it flips
        let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "5"])
        try upstream.answer(head, body: "hello")
        #expect(h.output().isEmpty, "written to a socket that is not writable")
        h.channel.isWritable = true
        h.channel.pipeline.fireChannelWritabilityChanged()
        #expect(Self.body(h.output(), stream: 1) == "hello")
    }

    @Test func emptyDataFramesBetweenRequestsAreForgiven() throws {
        let h = try Harness()
        try h.poolUpstream()
        let upstream = try #require(h.upstream)
        var answered: [UInt32] = []
        for stream in stride(from: UInt32(1), through: 9, by: 2) {
            h.headers(stream: stream, path: "/api/upload", endStream: false)
            h.send((0..<60).flatMap { _ in Harness.frame(type: 0, flags: 0, stream: stream) })
            h.data(stream: stream, count: 0, endStream: true)
            // The pooled connection serves each request in turn.
            let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "0"])
            try upstream.answer(head)
            let frames = h.output()
            #expect(!frames.contains { $0.type == 7 }, "GOAWAY after \(answered.count) requests")
            answered += frames.filter { $0.type == 1 }.map(\.stream)
        }
        #expect(answered == [1, 3, 5, 7, 9])
    }
}

@Suite("Empty DATA frame guard")
struct EmptyDataFrameGuardTests {
    @Test func countsOnlyEmptyFramesInARow() {
        var guardian = EmptyDataFrameGuard(limit: 3)
        var accepted: [Bool] = []
        for _ in 0..<3 { accepted.append(guardian.record(.data(length: 0, endStream: false))) }
        // Non-empty DATA is not "work done" in DOSHeuristics' sense: the count stays.
        accepted.append(guardian.record(.data(length: 10, endStream: false)))
        #expect(accepted == [true, true, true, true])
        #expect(guardian.inARow == 3)
        let fourth = guardian.record(.data(length: 0, endStream: false))
        #expect(!fourth)
    }

    @Test func headersAndEndStreamStartTheCountOver() {
        var guardian = EmptyDataFrameGuard(limit: 3)
        for _ in 0..<3 { _ = guardian.record(.data(length: 0, endStream: false)) }
        let afterHeaders = guardian.record(.headers)
        #expect(afterHeaders && guardian.inARow == 0)
        for _ in 0..<3 { _ = guardian.record(.data(length: 0, endStream: false)) }
        // An empty DATA frame that ends its stream did work.
        let afterEnd = guardian.record(.data(length: 0, endStream: true))
        #expect(afterEnd && guardian.inARow == 0)
        for _ in 0..<3 { _ = guardian.record(.data(length: 0, endStream: false)) }
        // Other frames (WINDOW_UPDATE, PING …) neither add nor forgive.
        let afterOther = guardian.record(.other)
        #expect(afterOther && guardian.inARow == 3)
    }
}

extension EmbeddedChannel {
    /// The bytes written to this channel since the last call.
    func writtenText() -> String {
        var text = ""
        while let data = try? self.readOutbound(as: IOData.self) {
            if case .byteBuffer(let buffer) = data { text += String(buffer: buffer) }
        }
        return text
    }

    /// An upstream's response to the request written to this pooled connection, as the bytes it
    /// would send.
    func answer(_ head: HTTPResponseHead, body: String = "") throws {
        var text = "HTTP/1.1 \(head.status.code) \(head.status.reasonPhrase)\r\n"
        for (name, value) in head.headers { text += "\(name): \(value)\r\n" }
        try self.writeInbound(ByteBuffer(string: text + "\r\n" + body))
    }
}
