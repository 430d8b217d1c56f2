import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import Gateway

/// Counts `read()` calls that reach the head of the pipeline, i.e. that the tunnel let through.
final class TunnelReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    var reads = 0
    func read(context: ChannelHandlerContext) {
        self.reads += 1
        context.read()
    }
}

@Suite("WebSocket tunnel")
struct TunnelTests {
    /// Two embedded channels on one loop joined by a tunnel, as `TunnelSwitch` joins the real ones.
    struct Pair {
        let loop = EmbeddedEventLoop()
        let client: EmbeddedChannel
        let upstream: EmbeddedChannel
        let clientReads = TunnelReadCounter()
        let upstreamReads = TunnelReadCounter()
        let tunnel: ByteTunnel

        init(idle: TimeAmount = .seconds(10)) throws {
            self.client = EmbeddedChannel(loop: self.loop)
            self.upstream = EmbeddedChannel(loop: self.loop)
            self.tunnel = ByteTunnel(eventLoop: self.loop, idleTimeout: idle)
            try self.client.pipeline.syncOperations.addHandlers([self.clientReads, self.tunnel.clientHandler!])
            try self.upstream.pipeline.syncOperations.addHandlers([self.upstreamReads, self.tunnel.upstream])
            try self.client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            try self.upstream.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
            self.tunnel.clientHandler!.release()
            self.tunnel.upstream.release()
            self.tunnel.start()
        }

        func bytes(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }
    }

    @Test func acceptKeyFollowsRFC6455() {
        // The example of RFC 6455 §1.3.
        #expect(WebSocketHandshake.accept(forKey: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        #expect(Base64.encode([0x66, 0x6f]) == "Zm8=" && Base64.encode([0x66, 0x6f, 0x6f]) == "Zm9v")
    }

    @Test func handshakeNeedsEveryField() {
        var head = RequestHead(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/ws", headers: [
            "upgrade": "WebSocket", "connection": "keep-alive, Upgrade",
            "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        ]))
        let handshake = WebSocketHandshake(head, routeName: "ws", idleTimeout: .seconds(1))
        #expect(handshake?.expectedAccept == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        var wrong = HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: [
            "upgrade": "websocket", "connection": "upgrade", "sec-websocket-accept": "AAAA",
        ])
        #expect(handshake?.accepts(wrong) == false)
        wrong.headers.replaceOrAdd(name: "sec-websocket-accept", value: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        #expect(handshake?.accepts(wrong) == true)
        head.method = .POST
        #expect(WebSocketHandshake(head, routeName: "ws", idleTimeout: .seconds(1)) == nil)
        head.method = .GET
        head.headers.remove(name: "sec-websocket-version")
        #expect(WebSocketHandshake(head, routeName: "ws", idleTimeout: .seconds(1)) == nil)
    }

    @Test func bytesFlowBothWaysUnchanged() throws {
        let pair = try Pair()
        try pair.client.writeInbound(pair.bytes("\u{81}\u{85}mask-hello"))
        pair.client.pipeline.fireChannelReadComplete()
        #expect(try pair.upstream.readOutbound(as: ByteBuffer.self) == pair.bytes("\u{81}\u{85}mask-hello"))
        try pair.upstream.writeInbound(pair.bytes("\u{81}\u{05}hello"))
        pair.upstream.pipeline.fireChannelReadComplete()
        #expect(try pair.client.readOutbound(as: ByteBuffer.self) == pair.bytes("\u{81}\u{05}hello"))
        // Nothing is passed on behind the tunnel's handlers.
        #expect(try pair.client.readInbound(as: ByteBuffer.self) == nil)
    }

    @Test func aFullSideStopsReadingTheOther() throws {
        let pair = try Pair()
        pair.upstream.isWritable = false
        pair.upstream.pipeline.fireChannelWritabilityChanged()
        try pair.client.writeInbound(pair.bytes("frame"))
        let before = pair.clientReads.reads
        pair.client.read()
        #expect(pair.clientReads.reads == before, "client reads go on while the upstream cannot take more")
        pair.upstream.isWritable = true
        pair.upstream.pipeline.fireChannelWritabilityChanged()
        #expect(pair.clientReads.reads == before + 1, "the held read resumes once the upstream drained")
    }

    @Test func idleTunnelClosesBothSidesOnce() throws {
        let pair = try Pair(idle: .seconds(10))
        var ended: [TunnelTotals] = []
        pair.tunnel.onEnd = { ended.append($0) }
        pair.loop.advanceTime(by: .seconds(6))
        try pair.client.writeInbound(pair.bytes("ping"))
        pair.loop.advanceTime(by: .seconds(6))
        #expect(ended.isEmpty && pair.client.isActive, "activity 6 s ago: not idle yet")
        pair.loop.advanceTime(by: .seconds(5))
        #expect(ended.count == 1)
        #expect(ended.first?.reason == "idle_timeout" && ended.first?.bytesIn == 4)
        #expect(!pair.client.isActive && !pair.upstream.isActive)
    }

    @Test func frameBoundariesAcrossArbitrarySplits() {
        // A 5-byte masked text frame, a 300-byte binary frame (16-bit length), a 70,000-byte one
        // (64-bit length), fed in pieces of every size from 1 to 17 bytes.
        var stream: [UInt8] = [0x81, 0x85, 1, 2, 3, 4] + Array("hello".utf8)
        stream += [0x82, 126, 0x01, 0x2c] + [UInt8](repeating: 7, count: 300)
        stream += [0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70] + [UInt8](repeating: 9, count: 70_000)
        let ends: Set<Int> = [11, 11 + 304, stream.count]
        for piece in 1...17 {
            var boundary = FrameBoundary()
            var offset = 0
            while offset < stream.count {
                let next = min(offset + piece, stream.count)
                boundary.consume(ByteBuffer(bytes: stream[offset..<next]))
                // At a boundary exactly when the bytes so far end a frame.
                #expect(boundary.isAtBoundary == ends.contains(next), "piece \(piece), offset \(next)")
                offset = next
            }
            #expect(boundary.isAtBoundary)
        }
        let close = FrameBoundary.goingAway(masked: true, allocator: ByteBufferAllocator())
        let bytes = Array(close.readableBytesView)
        #expect(bytes.count == 8 && bytes[0] == 0x88 && bytes[1] == 0x82)
        #expect([bytes[6] ^ bytes[2], bytes[7] ^ bytes[3]] == [0x03, 0xe9])
    }

    @Test func oneSideClosingEndsTheTunnelAfterRelaying() throws {
        let pair = try Pair()
        var reasons: [String] = []
        pair.tunnel.onEnd = { reasons.append($0.reason) }
        try pair.upstream.writeInbound(pair.bytes("\u{88}\u{02}\u{03}\u{e8}"))  // close frame, 1000
        pair.upstream.pipeline.fireChannelInactive()
        #expect(reasons == ["upstream_closed"])
        #expect(try pair.client.readOutbound(as: ByteBuffer.self) == pair.bytes("\u{88}\u{02}\u{03}\u{e8}"))
        #expect(!pair.client.isActive)
    }
}
