import COpenSSL
import NIOCore
import NIOEmbedded
import Testing
@testable import Gateway

/// Real OpenSSL handshakes between ``TLSTestClient`` and a `TLSServerHandler` in an EmbeddedChannel.
@Suite struct TLSHandshakeTests {
    let certs = TestCertificates.shared

    func makeContext(
        alpn: [String] = ["h2", "http/1.1"],
        minimum: TLSProtocolVersion = .v1_2,
        pairs: [TLSCertificatePair]? = nil
    ) throws -> TLSServerContext {
        try TLSServerContext(settings: TLSServerSettings(
            minimumVersion: minimum,
            certificates: pairs ?? [self.certs.defaultPair, self.certs.apiPair],
            alpnProtocols: alpn
        ))
    }

    @Test func handshakeCompletesAndDataRoundTrips() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["http/1.1"], serverName: "default.test"), echo: true)
        try b2b.handshake()
        #expect(b2b.client.status == .established)
        let handshake = try #require(b2b.recorder.handshake)
        #expect(handshake.version == "TLSv1.3")
        #expect(handshake.negotiatedProtocol == "http/1.1")
        #expect(handshake.serverName == "default.test")
        #expect(handshake.resumed == false)

        b2b.client.write("hello over tls")
        try b2b.shuttle()
        #expect(b2b.recorder.receivedText == "hello over tls")
        #expect(b2b.client.takeReceivedText() == "hello over tls")  // echoed, encrypted by the server
    }

    @Test func eventFiredBeforeDataThatArrivesWithClientFinished() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["h2"]))
        // Client hello → server flight → client Finished; do not deliver the Finished yet.
        b2b.client.step()
        try b2b.channel.writeInbound(try #require(b2b.client.takeOutput()))
        while let out = try b2b.channel.readOutbound(as: ByteBuffer.self) { b2b.client.feed(out) }
        b2b.client.step()
        #expect(b2b.client.status == .established)
        b2b.client.write("PRI * HTTP/2.0")
        // Finished and the first application record now go to the server in one read.
        let finishedAndData = try #require(b2b.client.takeOutput())
        #expect(b2b.recorder.handshake == nil)
        try b2b.channel.writeInbound(finishedAndData)
        let relevant = b2b.recorder.events.filter { if case .readComplete = $0 { return false } else { return true } }
        #expect(relevant.count == 2)
        guard relevant.count == 2 else { return }
        guard case .handshake(let completed) = relevant[0] else {
            Issue.record("first event must be the handshake, got \(relevant)")
            return
        }
        #expect(completed.negotiatedProtocol == "h2")
        #expect(relevant[1] == .data("PRI * HTTP/2.0"))
    }

    /// The gateway's codec is installed by the TLS handler at the handshake's end (no switching
    /// handler): it must see the handshake and then the request that came with the Finished.
    @Test func installedHandlerGetsDataThatArrivesWithClientFinished() throws {
        var installedFor: [String?] = []
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["h2"])) { handshake in
            installedFor.append(handshake.negotiatedProtocol)
        }
        b2b.client.step()
        try b2b.channel.writeInbound(try #require(b2b.client.takeOutput()))
        while let out = try b2b.channel.readOutbound(as: ByteBuffer.self) { b2b.client.feed(out) }
        b2b.client.step()
        b2b.client.write("PRI * HTTP/2.0")
        try b2b.channel.writeInbound(try #require(b2b.client.takeOutput()))
        #expect(installedFor == ["h2"])
        let relevant = b2b.recorder.events.filter { if case .readComplete = $0 { return false } else { return true } }
        #expect(relevant.count == 2)
        guard relevant.count == 2, case .handshake = relevant[0] else {
            Issue.record("want the handshake, then the data: \(relevant)")
            return
        }
        #expect(relevant[1] == .data("PRI * HTTP/2.0"))
    }

    /// An installer that cannot add its handlers closes the connection; no decrypted byte is
    /// passed on to whatever is left of the pipeline.
    @Test func failedInstallClosesTheConnection() throws {
        struct CannotInstall: Error {}
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient()) { _ in throw CannotInstall() }
        b2b.client.step()
        try b2b.channel.writeInbound(try #require(b2b.client.takeOutput()))
        while let out = try b2b.channel.readOutbound(as: ByteBuffer.self) { b2b.client.feed(out) }
        b2b.client.step()
        b2b.client.write("GET / HTTP/1.1")
        // The close reaches the pipeline's end as an unclean shutdown, which EmbeddedChannel throws.
        _ = try? b2b.channel.writeInbound(try #require(b2b.client.takeOutput()))
        #expect(!b2b.channel.isActive)
        #expect(b2b.recorder.events.isEmpty)
    }

    @Test func writesBeforeHandshakeAreSentAfterIt() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient())
        let promise = b2b.loop.makePromise(of: Void.self)
        b2b.channel.write(ByteBuffer(string: "early "), promise: nil)
        b2b.channel.writeAndFlush(ByteBuffer(string: "bird"), promise: promise)
        // Nothing but the handshake may leave before it completes.
        #expect(try b2b.channel.readOutbound(as: ByteBuffer.self) == nil)
        try b2b.handshake()
        #expect(b2b.client.takeReceivedText() == "early bird")
        #expect(throws: Never.self) { try promise.futureResult.wait() }
    }

    @Test(arguments: [
        (["h2", "http/1.1"], ["http/1.1", "h2"], "h2"),
        (["http/1.1", "h2"], ["h2", "http/1.1"], "http/1.1"),
        (["h2", "http/1.1"], ["http/1.1"], "http/1.1"),
    ])
    func alpnUsesServerPreference(server: [String], client: [String], expected: String) throws {
        let b2b = try BackToBack(context: try makeContext(alpn: server), client: TLSTestClient(alpn: client))
        try b2b.handshake()
        #expect(b2b.client.negotiatedALPN == expected)
        #expect(b2b.recorder.handshake?.negotiatedProtocol == expected)
    }

    @Test func noALPNFromClientMeansNil() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient())
        try b2b.handshake()
        #expect(b2b.client.status == .established)
        #expect(try #require(b2b.recorder.handshake).negotiatedProtocol == nil)
    }

    @Test func alpnMismatchFailsWithNoApplicationProtocol() throws {
        let b2b = try BackToBack(context: try makeContext(alpn: ["h2"]), client: TLSTestClient(alpn: ["spdy/3"]))
        try b2b.handshake()
        guard case .failed(let errors) = b2b.client.status else {
            Issue.record("client should have failed, is \(b2b.client.status)")
            return
        }
        #expect(errors.contains { $0.contains("no application protocol") }, "\(errors)")
        #expect(b2b.recorder.handshake == nil)
        #expect(b2b.recorder.errors.contains { ($0 as? TLSError) == .handshakeFailed })
        #expect(!b2b.channel.isActive)
    }

    @Test func sniPicksSecondCertificate() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(serverName: "API.example.com"))
        try b2b.handshake()
        #expect(b2b.client.peerSubject == "/CN=api.example.com")
        #expect(b2b.recorder.handshake?.serverName == "API.example.com")
    }

    @Test(arguments: [
        ("x.example.org", "/CN=api.example.com"),
        ("a.b.example.org", "/CN=default.test"),  // wildcard matches one label only
        ("unknown.test", "/CN=default.test"),
        ("localhost", "/CN=default.test"),
    ])
    func sniWildcardAndFallback(name: String, subject: String) throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(serverName: name))
        try b2b.handshake()
        #expect(b2b.client.peerSubject == subject)
    }

    @Test func noSNIUsesDefaultCertificate() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient())
        try b2b.handshake()
        #expect(b2b.client.peerSubject == "/CN=default.test")
    }

    @Test func serverNamesComeFromSANOrCN() throws {
        let context = try makeContext(pairs: [self.certs.defaultPair, self.certs.apiPair, self.certs.noSANPair])
        #expect(context.serverNames == [["default.test", "localhost"], ["api.example.com", "*.example.org"], ["nosan.test"]])
    }

    @Test func tls11ClientIsRefused() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(maxVersion: TLS1_1_VERSION))
        try b2b.handshake()
        guard case .failed(let errors) = b2b.client.status else {
            Issue.record("TLS 1.1 client must be refused, is \(b2b.client.status)")
            return
        }
        #expect(errors.contains { $0.contains("protocol version") }, "\(errors)")
        #expect(b2b.recorder.errors.contains { ($0 as? TLSError) == .handshakeFailed })
        #expect(!b2b.channel.isActive)
    }

    @Test func tls12OnlyClientWorks() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(alpn: ["h2"], maxVersion: TLS1_2_VERSION), echo: true)
        try b2b.handshake()
        #expect(b2b.recorder.handshake?.version == "TLSv1.2")
        #expect(b2b.recorder.handshake?.negotiatedProtocol == "h2")
        b2b.client.write("ping")
        try b2b.shuttle()
        #expect(b2b.client.takeReceivedText() == "ping")
    }

    @Test func tls12ClientRefusedWhenMinimumIs13() throws {
        let b2b = try BackToBack(context: try makeContext(minimum: .v1_3), client: TLSTestClient(maxVersion: TLS1_2_VERSION))
        try b2b.handshake()
        #expect(b2b.client.status != .established)
        #expect(!b2b.channel.isActive)
    }

    @Test(arguments: [TLS1_3_VERSION, TLS1_2_VERSION])
    func sessionResumption(version: Int32) throws {
        let context = try makeContext()
        let first = try BackToBack(context: context, client: TLSTestClient(serverName: "default.test", maxVersion: version))
        try first.handshake()
        #expect(first.recorder.handshake?.resumed == false)
        let session = try #require(first.client.copySession())
        defer { SSL_SESSION_free(session) }

        let second = try BackToBack(context: context, client: TLSTestClient(serverName: "default.test", maxVersion: version, session: session))
        try second.handshake()
        #expect(second.client.status == .established)
        #expect(second.client.sessionReused)
        #expect(second.recorder.handshake?.resumed == true)
    }

    @Test func resumptionWorksUnderSecondCertificate() throws {
        let context = try makeContext()
        let first = try BackToBack(context: context, client: TLSTestClient(serverName: "api.example.com"))
        try first.handshake()
        let session = try #require(first.client.copySession())
        defer { SSL_SESSION_free(session) }
        let second = try BackToBack(context: context, client: TLSTestClient(serverName: "api.example.com", session: session))
        try second.handshake()
        #expect(second.recorder.handshake?.resumed == true)
    }

    @Test func closeSendsCloseNotifyAndClosesWhenPeerAnswers() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient())
        try b2b.handshake()
        let closed = b2b.channel.close()
        #expect(b2b.channel.isActive)  // waiting for the peer's close_notify
        try b2b.shuttle()
        #expect(b2b.client.receivedCloseNotify)
        b2b.client.sendCloseNotify()
        try b2b.shuttle()
        #expect(!b2b.channel.isActive)
        #expect(throws: Never.self) { try closed.wait() }
        #expect(b2b.recorder.errors.isEmpty)
    }

    @Test func closeWaitIsBounded() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient())
        try b2b.handshake()
        let closed = b2b.channel.close()
        try b2b.shuttle()
        #expect(b2b.client.receivedCloseNotify)
        #expect(b2b.channel.isActive)
        b2b.loop.advanceTime(by: .milliseconds(999))
        #expect(b2b.channel.isActive)
        b2b.loop.advanceTime(by: .milliseconds(1))
        #expect(!b2b.channel.isActive)
        #expect(throws: Never.self) { try closed.wait() }
    }

    @Test func peerCloseNotifyIsAnsweredAndClosesChannel() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient())
        try b2b.handshake()
        b2b.client.sendCloseNotify()
        try b2b.shuttle()
        #expect(!b2b.channel.isActive)
        #expect(b2b.client.receivedCloseNotify)
        #expect(b2b.recorder.errors.isEmpty)
        #expect(b2b.recorder.events.contains(.inactive))
    }

    @Test func eofWithoutCloseNotifyIsUnclean() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient())
        try b2b.handshake()
        b2b.channel.pipeline.fireChannelInactive()
        #expect(b2b.recorder.errors.contains { ($0 as? TLSError) == .uncleanShutdown })
    }

    @Test func handshakeTimeoutClosesChannel() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(), handshakeTimeout: .seconds(5))
        b2b.loop.advanceTime(by: .seconds(4))
        #expect(b2b.channel.isActive)
        b2b.loop.advanceTime(by: .seconds(1))
        #expect(!b2b.channel.isActive)
        #expect(b2b.recorder.errors.contains { ($0 as? TLSError) == .handshakeTimedOut })
    }

    @Test func completedHandshakeCancelsTimeout() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient(), handshakeTimeout: .seconds(5))
        try b2b.handshake()
        b2b.loop.advanceTime(by: .seconds(10))
        #expect(b2b.channel.isActive)
        #expect(b2b.recorder.errors.isEmpty)
    }

    @Test func garbageClientHelloFailsWithoutCrash() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient())
        try b2b.channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        #expect(!b2b.channel.isActive)
        #expect(b2b.recorder.errors.contains { ($0 as? TLSError) == .handshakeFailed })
    }

    @Test func writePromisesCompleteAfterHandshake() throws {
        let b2b = try BackToBack(context: try makeContext(), client: TLSTestClient())
        try b2b.handshake()
        let first = b2b.loop.makePromise(of: Void.self)
        let second = b2b.loop.makePromise(of: Void.self)
        b2b.channel.write(ByteBuffer(string: "a"), promise: first)
        b2b.channel.write(ByteBuffer(string: "b"), promise: second)
        b2b.channel.flush()
        // Coalesced into one record, so one socket write.
        #expect(try b2b.channel.readOutbound(as: ByteBuffer.self) != nil)
        #expect(try b2b.channel.readOutbound(as: ByteBuffer.self) == nil)
        try first.futureResult.wait()
        try second.futureResult.wait()
    }
}
