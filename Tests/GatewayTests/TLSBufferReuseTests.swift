import COpenSSL
import NIOCore
import NIOEmbedded
import Testing
@testable import Gateway

/// Keeps every buffer it is given, as a decoder's cumulation buffer or a queued pipelined request would.
final class RetainingHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    var buffers: [ByteBuffer] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.buffers.append(self.unwrapInboundIn(data))
    }
}

/// On its first read, passes more ciphertext in from the pipeline's head, as a re-entrant read would.
final class ReentrantFeeder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    var ciphertext: ByteBuffer?
    var received: [String] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.received.append(String(buffer: self.unwrapInboundIn(data)))
        if let ciphertext = self.ciphertext {
            self.ciphertext = nil
            context.pipeline.fireChannelRead(ciphertext)
        }
    }
}

/// The TLS handler reuses one plaintext buffer, one ciphertext buffer and one coalescing buffer per
/// connection, and its BIO borrows the socket's buffers. These tests hold on to what it hands out and check that reuse never changes it.
@Suite struct TLSBufferReuseTests {
    let certs = TestCertificates.shared
    let loop = EmbeddedEventLoop()

    func makeContext() throws -> TLSServerContext {
        try TLSServerContext(settings: TLSServerSettings(
            minimumVersion: .v1_2,
            certificates: [self.certs.defaultPair],
            alpnProtocols: ["http/1.1"]
        ))
    }

    @Test func plaintextHeldByTheNextHandlerSurvivesLaterReads() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["http/1.1"]))
        let retainer = RetainingHandler()
        try b2b.channel.pipeline.syncOperations.addHandler(retainer, position: .before(b2b.recorder))
        try b2b.handshake()
        let messages = ["GET /first HTTP/1.1\r\n\r\n", "GET /second HTTP/1.1\r\n\r\n", "third"]
        for message in messages {
            b2b.client.write(message)
            try b2b.shuttle()
        }
        #expect(retainer.buffers.map { String(buffer: $0) } == messages)
    }

    @Test func recordsArrivingTogetherArePassedOnInOneRead() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["http/1.1"]))
        let retainer = RetainingHandler()
        try b2b.channel.pipeline.syncOperations.addHandler(retainer, position: .before(b2b.recorder))
        try b2b.handshake()
        // Three records, one socket read.
        b2b.client.write("one ")
        b2b.client.write("two ")
        b2b.client.write("three")
        try b2b.channel.writeInbound(try #require(b2b.client.takeOutput()))
        #expect(retainer.buffers.map { String(buffer: $0) } == ["one two three"])
    }

    @Test func ciphertextFedDuringDeliveryIsDecryptedInTheSameLoop() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["http/1.1"]))
        let feeder = ReentrantFeeder()
        try b2b.channel.pipeline.syncOperations.addHandler(feeder, position: .before(b2b.recorder))
        try b2b.handshake()
        b2b.client.write("first ")
        let first = try #require(b2b.client.takeOutput())
        b2b.client.write("second")
        feeder.ciphertext = try #require(b2b.client.takeOutput())
        // Only the first record arrives from the socket; the second is fed while the first is handled.
        try b2b.channel.writeInbound(first)
        #expect(feeder.received == ["first ", "second"])
    }

    /// The BIO reads straight from the socket's buffer and copies only a cut record's start out of
    /// it: those kept bytes must come first when the rest arrives, however the reads cut the records.
    @Test func recordsCutAcrossSocketReadsAreDecryptedWhole() throws {
        for chunkSize in [1, 7, 100] {
            let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["http/1.1"]))
            let retainer = RetainingHandler()
            try b2b.channel.pipeline.syncOperations.addHandler(retainer, position: .before(b2b.recorder))
            try b2b.handshake()
            b2b.client.write("GET /cut HTTP/1.1\r\n")
            b2b.client.write("host: a\r\n\r\n")
            var ciphertext = try #require(b2b.client.takeOutput())
            while ciphertext.readableBytes > 0 {
                let chunk = ciphertext.readSlice(length: min(chunkSize, ciphertext.readableBytes))!
                try b2b.channel.writeInbound(chunk)
            }
            #expect(retainer.buffers.map { String(buffer: $0) }.joined() == "GET /cut HTTP/1.1\r\nhost: a\r\n\r\n",
                    "chunks of \(chunkSize) bytes")
            #expect(b2b.recorder.errors.isEmpty)
        }
    }

    @Test func anErrorLeftOnTheThreadByOtherOpenSSLUseDoesNotFailTheConnection() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["http/1.1"]), echo: true)
        try b2b.handshake()
        // Another OpenSSL user on this event loop (a JWT check, a config load) fails and leaves its error queued.
        #expect(BIO_new_file("/nonexistent/gateway-test", "r") == nil)
        #expect(ERR_peek_error() != 0)
        b2b.client.write("still fine")
        try b2b.shuttle()
        #expect(b2b.recorder.errors.isEmpty)
        #expect(b2b.recorder.receivedText == "still fine")
        #expect(b2b.client.takeReceivedText() == "still fine")
    }

    @Test func recordsLargerThanTheBufferArriveWholeAndInOrder() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["http/1.1"]))
        let retainer = RetainingHandler()
        try b2b.channel.pipeline.syncOperations.addHandler(retainer, position: .before(b2b.recorder))
        try b2b.handshake()
        let payload = String((0..<40_000).map { Character(UnicodeScalar(UInt8(97 + $0 % 26))) })
        b2b.client.write(payload)  // three records
        try b2b.channel.writeInbound(try #require(b2b.client.takeOutput()))
        #expect(retainer.buffers.map { String(buffer: $0) }.joined() == payload)
        #expect(retainer.buffers.allSatisfy { $0.readableBytes <= TLSConnection.readChunkSize })
        #expect(retainer.buffers.count == 3)
    }

    @Test func ciphertextHeldBySocketSurvivesLaterWrites() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["http/1.1"]))
        try b2b.handshake()
        // Three responses whose ciphertext stays queued in the channel, as behind a slow socket.
        for text in ["alpha ", "beta ", "gamma"] {
            b2b.channel.write(ByteBuffer(string: text), promise: nil)
            b2b.channel.flush()
        }
        var queued: [ByteBuffer] = []
        while let output = try b2b.channel.readOutbound(as: ByteBuffer.self) { queued.append(output) }
        #expect(queued.count == 3)
        for output in queued { b2b.client.feed(output) }
        b2b.client.step()
        #expect(b2b.client.takeReceivedText() == "alpha beta gamma")
    }

    @Test func coalescedWritesLeaveTheApplicationsBuffersAlone() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["http/1.1"]))
        try b2b.handshake()
        var kept: [ByteBuffer] = []
        for round in 0..<3 {
            let head = ByteBuffer(string: "head\(round) ")
            let body = ByteBuffer(string: "body\(round) ")
            kept += [head, body]
            b2b.channel.write(head, promise: nil)
            b2b.channel.writeAndFlush(body, promise: nil)
            try b2b.shuttle()
        }
        #expect(b2b.client.takeReceivedText() == "head0 body0 head1 body1 head2 body2 ")
        #expect(kept.map { String(buffer: $0) } == ["head0 ", "body0 ", "head1 ", "body1 ", "head2 ", "body2 "])
    }

    // MARK: The coalescing buffer in the state machine

    func activeMachine() -> TLSConnectionStateMachine {
        var machine = TLSConnectionStateMachine()
        _ = machine.channelActive()
        _ = machine.handshakeStepped(.complete)
        return machine
    }

    @Test func aSingleWriteIsEncryptedFromTheApplicationsBuffer() throws {
        var machine = self.activeMachine()
        _ = machine.write(ByteBuffer(string: "only"), promise: nil)
        guard case .encrypt(let batch) = machine.flush() else { Issue.record("expected encrypt"); return }
        #expect(String(buffer: batch.plaintext) == "only")
        #expect(!batch.plaintextIsOwned)
    }

    @Test func coalescingBufferIsReusedAndAHeldBatchStaysIntact() throws {
        var machine = self.activeMachine()
        let promise = self.loop.makePromise(of: Void.self)
        _ = machine.write(ByteBuffer(string: "head "), promise: nil)
        _ = machine.write(ByteBuffer(string: "body"), promise: promise)
        guard case .encrypt(let first) = machine.flush() else { Issue.record("expected encrypt"); return }
        #expect(String(buffer: first.plaintext) == "head body")
        #expect(first.plaintextIsOwned)
        #expect(first.promises.count == 1)
        first.promises.forEach { $0.succeed() }
        machine.encrypted(first)

        _ = machine.write(ByteBuffer(string: "second "), promise: nil)
        _ = machine.write(ByteBuffer(string: "batch"), promise: nil)
        guard case .encrypt(let second) = machine.flush() else { Issue.record("expected encrypt"); return }
        #expect(String(buffer: second.plaintext) == "second batch")
        // `first` still refers to the recycled storage: copy-on-write kept its bytes.
        #expect(String(buffer: first.plaintext) == "head body")
    }

    @Test func anOversizedCoalescingBufferIsNotKept() throws {
        var machine = self.activeMachine()
        let big = ByteBuffer(repeating: 0x61, count: TLSConnectionStateMachine.keptCapacityLimit)
        _ = machine.write(big, promise: nil)
        _ = machine.write(ByteBuffer(string: "tail"), promise: nil)
        guard case .encrypt(let batch) = machine.flush() else { Issue.record("expected encrypt"); return }
        #expect(batch.plaintext.capacity > TLSConnectionStateMachine.keptCapacityLimit)
        machine.encrypted(batch)
        #expect(machine.keptCoalescingCapacity == nil)
    }
}
