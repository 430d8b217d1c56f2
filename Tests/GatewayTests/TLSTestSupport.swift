import Foundation
import NIOCore
import NIOEmbedded
import COpenSSL
@testable import Gateway

// MARK: - Throwaway certificates, generated once per test run with the openssl CLI

struct TestCertificates: Sendable {
    let directory: String
    /// SAN default.test, localhost.
    let defaultPair: TLSCertificatePair
    /// SAN api.example.com, *.example.org.
    let apiPair: TLSCertificatePair
    /// CN only, no SAN.
    let noSANPair: TLSCertificatePair
    /// A key that belongs to no certificate above.
    let strayKeyPath: String
    let garbagePath: String

    static let shared: TestCertificates = {
        do { return try TestCertificates.generate() } catch { fatalError("cannot generate test certificates: \(error)") }
    }()

    private static func generate() throws -> TestCertificates {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("gateway-tls-tests-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        func makePair(_ name: String, cn: String, san: String?) throws -> TLSCertificatePair {
            let cert = "\(directory)/\(name).crt"
            let key = "\(directory)/\(name).key"
            var arguments = [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-days", "2", "-subj", "/CN=\(cn)", "-keyout", key, "-out", cert,
            ]
            if let san { arguments += ["-addext", "subjectAltName=\(san)"] }
            try runOpenSSL(arguments)
            return TLSCertificatePair(certificatePath: cert, keyPath: key)
        }
        let defaultPair = try makePair("default", cn: "default.test", san: "DNS:default.test,DNS:localhost")
        let apiPair = try makePair("api", cn: "api.example.com", san: "DNS:api.example.com,DNS:*.example.org")
        let noSANPair = try makePair("nosan", cn: "NoSAN.test", san: nil)
        let strayKey = "\(directory)/stray.key"
        try runOpenSSL(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", strayKey])
        let garbage = "\(directory)/garbage.crt"
        try "this is not a certificate\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        return TestCertificates(
            directory: directory, defaultPair: defaultPair, apiPair: apiPair, noSANPair: noSANPair,
            strayKeyPath: strayKey, garbagePath: garbage
        )
    }
}

struct ProcessFailed: Error, CustomStringConvertible {
    var description: String
}

@discardableResult
func runProcess(_ executable: String, _ arguments: [String], stdin: String? = nil) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let output = Pipe()
    let errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    let input = Pipe()
    process.standardInput = input
    try process.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    let outData = output.fileHandleForReading.readDataToEndOfFile()
    let errData = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let out = String(decoding: outData, as: UTF8.self)
    guard process.terminationStatus == 0 else {
        throw ProcessFailed(description: "\(executable) \(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(out) \(String(decoding: errData, as: UTF8.self))")
    }
    return out
}

func runOpenSSL(_ arguments: [String]) throws {
    try runProcess("/usr/bin/openssl", arguments)
}

// MARK: - A test-only OpenSSL client over memory BIOs

/// Client side of a TLS connection, driven by hand so tests can shuttle its bytes to a server in an
/// `EmbeddedChannel`. Verification is off: tests inspect the peer certificate themselves.
final class TLSTestClient {
    enum Status: Equatable {
        case handshaking
        case established
        case failed([String])
    }

    private let ctx: OpaquePointer
    private let ssl: OpaquePointer
    private let readBIO: OpaquePointer
    private let writeBIO: OpaquePointer
    private(set) var status: Status = .handshaking
    private(set) var received: [UInt8] = []
    private(set) var receivedCloseNotify = false

    init(
        alpn: [String] = [],
        serverName: String? = nil,
        minVersion: Int32? = nil,
        maxVersion: Int32? = nil,
        session: OpaquePointer? = nil
    ) {
        self.ctx = SSL_CTX_new(TLS_client_method())!
        if let minVersion { _ = gw_SSL_CTX_set_min_proto_version(self.ctx, minVersion) }
        if maxVersion != nil && maxVersion! < TLS1_2_VERSION {
            // OpenSSL 3 refuses TLS < 1.2 at security level 1+; drop it so the client really offers 1.1.
            _ = SSL_CTX_set_cipher_list(self.ctx, "DEFAULT:@SECLEVEL=0")
        }
        self.ssl = SSL_new(self.ctx)!
        self.readBIO = BIO_new(BIO_s_mem())!
        self.writeBIO = BIO_new(BIO_s_mem())!
        _ = gw_BIO_set_mem_eof_return(self.readBIO, -1)
        _ = gw_BIO_set_mem_eof_return(self.writeBIO, -1)
        SSL_set_bio(self.ssl, self.readBIO, self.writeBIO)
        SSL_set_connect_state(self.ssl)
        if let maxVersion { _ = gw_SSL_set_max_proto_version(self.ssl, maxVersion) }
        if let serverName { _ = gw_SSL_set_tlsext_host_name(self.ssl, serverName) }
        if !alpn.isEmpty {
            var wire: [UInt8] = []
            for name in alpn { wire.append(UInt8(name.utf8.count)); wire += Array(name.utf8) }
            _ = SSL_set_alpn_protos(self.ssl, wire, UInt32(wire.count))
        }
        if let session { _ = SSL_set_session(self.ssl, session) }
    }

    deinit {
        SSL_free(self.ssl)
        SSL_CTX_free(self.ctx)
    }

    func feed(_ buffer: ByteBuffer) {
        let bytes = Array(buffer.readableBytesView)
        _ = BIO_write(self.readBIO, bytes, Int32(bytes.count))
    }

    func takeOutput() -> ByteBuffer? {
        let pending = gw_BIO_pending(self.writeBIO)
        guard pending > 0 else { return nil }
        var bytes = [UInt8](repeating: 0, count: pending)
        let read = BIO_read(self.writeBIO, &bytes, Int32(pending))
        return ByteBuffer(bytes: bytes.prefix(Int(max(read, 0))))
    }

    /// Advances the handshake, or reads whatever application data (and tickets) arrived.
    func step() {
        ERR_clear_error()
        switch self.status {
        case .failed:
            return
        case .handshaking:
            let rc = SSL_do_handshake(self.ssl)
            if rc == 1 {
                self.status = .established
                self.readAvailable()
            } else {
                let error = SSL_get_error(self.ssl, rc)
                if error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE {
                    self.status = .failed(drainErrors())
                }
            }
        case .established:
            self.readAvailable()
        }
    }

    private func readAvailable() {
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            ERR_clear_error()
            let rc = SSL_read(self.ssl, &chunk, Int32(chunk.count))
            if rc > 0 {
                self.received += chunk.prefix(Int(rc))
                continue
            }
            if SSL_get_error(self.ssl, rc) == SSL_ERROR_ZERO_RETURN { self.receivedCloseNotify = true }
            return
        }
    }

    func write(_ text: String) {
        let bytes = Array(text.utf8)
        ERR_clear_error()
        precondition(SSL_write(self.ssl, bytes, Int32(bytes.count)) == Int32(bytes.count))
    }

    func sendCloseNotify() {
        ERR_clear_error()
        _ = SSL_shutdown(self.ssl)
    }

    func takeReceivedText() -> String {
        defer { self.received = [] }
        return String(decoding: self.received, as: UTF8.self)
    }

    var negotiatedALPN: String? {
        var pointer: UnsafePointer<UInt8>? = nil
        var length: UInt32 = 0
        SSL_get0_alpn_selected(self.ssl, &pointer, &length)
        guard let pointer, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: pointer, count: Int(length)), as: UTF8.self)
    }

    var version: String { String(cString: SSL_get_version(self.ssl)) }
    var sessionReused: Bool { SSL_session_reused(self.ssl) == 1 }

    /// The peer certificate's subject, e.g. "/CN=api.example.com".
    var peerSubject: String? {
        guard let cert = SSL_get1_peer_certificate(self.ssl) else { return nil }
        defer { X509_free(cert) }
        guard let name = X509_get_subject_name(cert), let line = X509_NAME_oneline(name, nil, 0) else { return nil }
        defer { gw_OPENSSL_free(line) }
        return String(cString: line)
    }

    /// `SSL_get1_session`; the caller owns the reference (free with `SSL_SESSION_free`).
    func copySession() -> OpaquePointer? { SSL_get1_session(self.ssl) }

    private func drainErrors() -> [String] {
        var messages: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            messages.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return messages
    }
}

// MARK: - Recorder and back-to-back harness

/// Records what the TLS handler passes on, in order; optionally echoes plaintext back.
final class RecorderHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Event: Equatable {
        case handshake(TLSHandshakeCompleted)
        case data(String)
        case error(String)
        case readComplete
        case inactive
    }

    var events: [Event] = []
    var errors: [any Error] = []
    let echo: Bool

    init(echo: Bool = false) { self.echo = echo }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        self.events.append(.data(String(buffer: buffer)))
        if self.echo {
            context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.events.append(.readComplete)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let completed = event as? TLSHandshakeCompleted {
            self.events.append(.handshake(completed))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.errors.append(error)
        self.events.append(.error(String(describing: error)))
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.events.append(.inactive)
    }

    var handshake: TLSHandshakeCompleted? {
        for case .handshake(let completed) in self.events { return completed }
        return nil
    }

    var receivedText: String {
        self.events.compactMap { if case .data(let text) = $0 { return text } else { return nil } }.joined()
    }
}

/// A `TLSServerHandler` in an `EmbeddedChannel` and a ``TLSTestClient``, with bytes moved between
/// them by hand (the idea of swift-nio-ssl's back-to-back embedded channels).
final class BackToBack {
    let channel: EmbeddedChannel
    let loop: EmbeddedEventLoop
    let client: TLSTestClient
    let recorder: RecorderHandler

    /// With `installer`, the recorder is not added up front: the TLS handler's protocol installer
    /// is called at the handshake's end, and the recorder is added then unless it throws.
    init(
        context: TLSServerContext, client: TLSTestClient, echo: Bool = false, handshakeTimeout: TimeAmount = .seconds(10),
        installer: ((TLSHandshakeCompleted) throws -> Void)? = nil
    ) throws {
        self.loop = EmbeddedEventLoop()
        self.channel = EmbeddedChannel(loop: self.loop)
        self.client = client
        let recorder = RecorderHandler(echo: echo)
        self.recorder = recorder
        let install: TLSServerHandler.ProtocolInstaller? = installer.map { installer in
            { handshake, pipeline in
                try installer(handshake)
                try pipeline.addHandler(recorder)
            }
        }
        try self.channel.pipeline.syncOperations.addHandler(TLSServerHandler(
            context: context, handshakeTimeout: handshakeTimeout, timers: LoopTimers(eventLoop: self.channel.eventLoop),
            installProtocol: install
        ))
        if installer == nil { try self.channel.pipeline.syncOperations.addHandler(self.recorder) }
        try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
    }

    /// Moves bytes both ways until neither side has anything more to say.
    func shuttle() throws {
        for _ in 0..<64 {
            var progressed = false
            self.client.step()
            while let output = self.client.takeOutput() {
                progressed = true
                if self.channel.isActive { try self.channel.writeInbound(output) }
            }
            while let output = try self.channel.readOutbound(as: ByteBuffer.self) {
                progressed = true
                self.client.feed(output)
            }
            if !progressed { break }
        }
        self.client.step()
    }

    /// Client connects, shuttles until the handshake is over either way.
    func handshake() throws {
        try self.shuttle()
    }
}
