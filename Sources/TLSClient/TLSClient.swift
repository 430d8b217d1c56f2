import NIOCore
private import COpenSSL
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Client-side TLS over memory BIOs for SwiftNIO channels, on the system OpenSSL: shared by the
/// load generator (`gateway bench`) and the gateway's own outbound HTTPS (the JWKS fetcher).
/// `SSL*` and `SSL_CTX*` never appear in a public signature (STYLE habit 3).

/// A TLS failure on one client connection (setup, handshake, verification, read or write), with
/// OpenSSL's error queue at the time, oldest first.
public struct TLSClientError: Error, CustomStringConvertible, Sendable {
    private enum Base: Sendable { case setup, handshake, io, alpn }
    private let base: Base
    public let detail: String

    public static func setup(_ detail: String) -> TLSClientError { TLSClientError(base: .setup, detail: detail) }
    public static func handshake(_ detail: String) -> TLSClientError { TLSClientError(base: .handshake, detail: detail) }
    public static func io(_ detail: String) -> TLSClientError { TLSClientError(base: .io, detail: detail) }
    public static func alpn(_ detail: String) -> TLSClientError { TLSClientError(base: .alpn, detail: detail) }

    public var description: String { "TLS \(self.base): \(self.detail)" }
}

/// Drains the thread's OpenSSL error queue into strings (it is shared by every channel on a loop).
private func openSSLErrors() -> String {
    var messages: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        messages.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    return messages.isEmpty ? "unknown error" : messages.joined(separator: "; ")
}

/// Where `SSLKEYLOGFILE` points, opened for appending once: the one file every context that asks
/// for key logging writes to (OpenSSL's callback carries no context of ours). Created readable by
/// its owner only: the secrets decrypt every connection of the run.
private nonisolated(unsafe) let keyLogSink: UnsafeMutablePointer<FILE>? = {
    guard let path = getenv("SSLKEYLOGFILE"), path.pointee != 0 else { return nil }
    let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
    guard descriptor >= 0 else { return nil }
    guard let file = fdopen(descriptor, "a") else {
        close(descriptor)
        return nil
    }
    return file
}()

/// One line per secret in the NSS key-log format; stdio's lock keeps lines from several
/// loops whole.
private let writeKeyLogLine: @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> Void = { _, line in
    guard let line, let sink = keyLogSink else { return }
    flockfile(sink)
    fputs(line, sink)
    fputc(10, sink)
    fflush(sink)
    funlockfile(sink)
}

/// One client `SSL_CTX` for a whole run: ALPN offer, verification against the system CA store (or
/// only the CAs of `caFile`) unless `insecure`. Immutable after init, so it is shared by every
/// connection on every loop.
public final class TLSClientContext: @unchecked Sendable {
    fileprivate let ctx: OpaquePointer
    public let insecure: Bool
    /// Appended to a verification failure: what the user of this context can do about it.
    public let verificationHint: String

    /// - Parameters:
    ///   - alpn: protocols to offer, in preference order (e.g. `["h2"]` or `["http/1.1"]`).
    ///   - insecure: skip certificate verification (test certificates with `gateway bench`).
    ///   - caFile: a PEM bundle trusted *instead of* the system store (a private CA), when given.
    ///   - certificateFile, keyFile: a client certificate chain and its key (PEM), for servers
    ///     that ask for one (Redis with `tls-auth-clients`).
    ///   - logsKeys: append the connections' TLS secrets to the file `SSLKEYLOGFILE` names, when it
    ///     is set, as curl does: so a capture can be decrypted (Wireshark, `benchmarks/wire.py`).
    ///     Only the load generator asks for it.
    public init(alpn: [String], insecure: Bool, caFile: String? = nil,
                certificateFile: String? = nil, keyFile: String? = nil, logsKeys: Bool = false,
                verificationHint: String = " (use --insecure for test certificates)") throws(TLSClientError) {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw .setup(openSSLErrors()) }
        self.ctx = ctx
        self.insecure = insecure
        self.verificationHint = verificationHint
        _ = gw_SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
        if insecure {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        } else {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            if let caFile {
                // Thrown after every stored property is set, so deinit frees `ctx`.
                guard SSL_CTX_load_verify_locations(ctx, caFile, nil) == 1 else {
                    throw .setup("CA bundle \(caFile): \(openSSLErrors())")
                }
            } else {
                guard SSL_CTX_set_default_verify_paths(ctx) == 1 else { throw .setup("system CA store: \(openSSLErrors())") }
            }
        }
        if let certificateFile {
            guard SSL_CTX_use_certificate_chain_file(ctx, certificateFile) == 1 else {
                throw .setup("client certificate \(certificateFile): \(openSSLErrors())")
            }
            guard SSL_CTX_use_PrivateKey_file(ctx, keyFile ?? certificateFile, SSL_FILETYPE_PEM) == 1,
                  SSL_CTX_check_private_key(ctx) == 1 else {
                throw .setup("client key \(keyFile ?? certificateFile): \(openSSLErrors())")
            }
        }
        // ALPN wire format (RFC 7301 §3.1): each name prefixed by its length. OpenSSL copies it.
        var wire: [UInt8] = []
        for name in alpn {
            wire.append(UInt8(name.utf8.count))
            wire.append(contentsOf: name.utf8)
        }
        // Unusually, 0 means success here.
        guard SSL_CTX_set_alpn_protos(ctx, wire, UInt32(wire.count)) == 0 else { throw .setup("ALPN: \(openSSLErrors())") }
        if logsKeys && keyLogSink != nil { SSL_CTX_set_keylog_callback(ctx, writeKeyLogLine) }
    }

    deinit { SSL_CTX_free(self.ctx) }
}

/// One client `SSL*` over two memory BIOs. Like the gateway's server-side `TLSConnection`, every
/// call clears the error queue first and maps the result to a Swift value; after each call the
/// handler drains `output` (handshake flights, alerts and close_notify are output too).
final class TLSClientConnection {
    enum Step {
        case done
        case wantMore
        case failed(TLSClientError)
    }

    enum Read {
        case data(ByteBuffer)
        case wantMore
        case closed
        case failed(TLSClientError)
    }

    private let context: TLSClientContext
    private let ssl: OpaquePointer
    private let readBIO: OpaquePointer
    private let writeBIO: OpaquePointer

    init(context: TLSClientContext, host: String, hostIsIPAddress: Bool) throws(TLSClientError) {
        ERR_clear_error()
        guard let ssl = SSL_new(context.ctx) else { throw .setup(openSSLErrors()) }
        guard let readBIO = BIO_new(BIO_s_mem()), let writeBIO = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw .setup(openSSLErrors())
        }
        _ = gw_BIO_set_mem_eof_return(readBIO, -1)
        _ = gw_BIO_set_mem_eof_return(writeBIO, -1)
        SSL_set_bio(ssl, readBIO, writeBIO)
        SSL_set_connect_state(ssl)
        self.context = context
        self.ssl = ssl
        self.readBIO = readBIO
        self.writeBIO = writeBIO
        if hostIsIPAddress {
            // No SNI for address literals (RFC 6066 §3); verify against the certificate's IP SANs.
            if !context.insecure {
                _ = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host)
            }
        } else {
            _ = gw_SSL_set_tlsext_host_name(ssl, host)
            if !context.insecure { _ = SSL_set1_host(ssl, host) }
        }
    }

    deinit { SSL_free(self.ssl) }

    func feed(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            var offset = 0
            while offset < bytes.count {
                let written = BIO_write(self.readBIO, base + offset, Int32(clamping: bytes.count - offset))
                guard written > 0 else { return }
                offset += Int(written)
            }
        }
    }

    func handshake() -> Step {
        ERR_clear_error()
        let rc = SSL_do_handshake(self.ssl)
        if rc == 1 { return .done }
        switch SSL_get_error(self.ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wantMore
        default:
            let verify = SSL_get_verify_result(self.ssl)
            if verify != X509_V_OK, let reason = X509_verify_cert_error_string(verify) {
                return .failed(.handshake("certificate verification failed: \(String(cString: reason))\(self.context.verificationHint)"))
            }
            return .failed(.handshake(openSSLErrors()))
        }
    }

    var negotiatedProtocol: String? {
        var alpn: UnsafePointer<UInt8>? = nil
        var length: UInt32 = 0
        SSL_get0_alpn_selected(self.ssl, &alpn, &length)
        guard let alpn, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: alpn, count: Int(length)), as: UTF8.self)
    }

    func read(allocator: ByteBufferAllocator) -> Read {
        var buffer = allocator.buffer(capacity: 16 * 1024)
        ERR_clear_error()
        var rc: Int32 = 0
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 16 * 1024) { bytes in
            rc = SSL_read(self.ssl, bytes.baseAddress, Int32(clamping: bytes.count))
            return rc > 0 ? Int(rc) : 0
        }
        if rc > 0 { return .data(buffer) }
        switch SSL_get_error(self.ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .wantMore
        case SSL_ERROR_ZERO_RETURN: return .closed
        default: return .failed(.io(openSSLErrors()))
        }
    }

    func write(_ buffer: ByteBuffer) -> TLSClientError? {
        var failure: TLSClientError? = nil
        buffer.withUnsafeReadableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            var offset = 0
            while offset < bytes.count {
                ERR_clear_error()
                let rc = SSL_write(self.ssl, base + offset, Int32(clamping: bytes.count - offset))
                guard rc > 0 else {
                    failure = .io(openSSLErrors())
                    return
                }
                offset += Int(rc)
            }
        }
        return failure
    }

    func shutdown() {
        ERR_clear_error()
        _ = SSL_shutdown(self.ssl)
    }

    func output(allocator: ByteBufferAllocator) -> ByteBuffer? {
        let pending = gw_BIO_pending(self.writeBIO)
        guard pending > 0 else { return nil }
        var buffer = allocator.buffer(capacity: pending)
        while gw_BIO_pending(self.writeBIO) > 0 {
            let read = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: gw_BIO_pending(self.writeBIO)) { bytes in
                Int(max(0, BIO_read(self.writeBIO, bytes.baseAddress, Int32(clamping: bytes.count))))
            }
            if read == 0 { break }
        }
        return buffer
    }
}

/// Fired inbound once the handshake is complete, before any decrypted byte.
public struct TLSClientHandshakeCompleted: Sendable {
    public var negotiatedProtocol: String?
}

/// Client-side TLS: ciphertext on the socket side, plaintext above.
///
/// Smaller than the gateway's server handler on purpose: its users (the load generator, the JWKS
/// fetcher) close connections themselves and treat any failure as "this connection is gone", so there is no
/// half-closure, no bounded close_notify wait and no separate state machine type; the three states
/// fit in this class. Writes made during the handshake are held (in order) and sent after it;
/// each flush becomes one `SSL_write`, as on the server.
public final class TLSClientHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State { case handshaking, active, closed }

    private let context: TLSClientContext
    private let host: String
    private let hostIsIPAddress: Bool
    private var connection: TLSClientConnection?
    private var state = State.handshaking
    private var unflushed: ByteBuffer?
    private var unflushedPromises: [EventLoopPromise<Void>] = []
    /// Flushed by the application during the handshake.
    private var held: ByteBuffer?
    private var heldPromises: [EventLoopPromise<Void>] = []

    /// `hostIsIPAddress`: `host` is an address literal (no SNI; verified against IP SANs).
    public init(context: TLSClientContext, host: String, hostIsIPAddress: Bool) {
        self.context = context
        self.host = host
        self.hostIsIPAddress = hostIsIPAddress
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        do {
            self.connection = try TLSClientConnection(context: self.context, host: self.host, hostIsIPAddress: self.hostIsIPAddress)
        } catch {
            self.fail(error, context: context)
            return
        }
        if context.channel.isActive { self.step(context: context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.failPending(ChannelError.ioOnClosedChannel)
        self.connection = nil
    }

    public func channelActive(context: ChannelHandlerContext) {
        self.step(context: context)
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.state = .closed
        self.failPending(ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection = self.connection else { return }
        connection.feed(self.unwrapInboundIn(data))
        switch self.state {
        case .handshaking: self.step(context: context)
        case .active: self.decrypt(context: context)
        case .closed: break
        }
    }

    private func step(context: ChannelHandlerContext) {
        guard let connection = self.connection, self.state == .handshaking else { return }
        let result = connection.handshake()
        self.writeOutput(context: context, flush: true)
        switch result {
        case .wantMore:
            break
        case .failed(let error):
            self.fail(error, context: context)
        case .done:
            self.state = .active
            context.fireUserInboundEventTriggered(TLSClientHandshakeCompleted(negotiatedProtocol: connection.negotiatedProtocol))
            if let held = self.held {
                let promises = self.heldPromises
                self.held = nil
                self.heldPromises = []
                self.encrypt(held, promises: promises, context: context)
            }
            self.decrypt(context: context)
        }
    }

    private func decrypt(context: ChannelHandlerContext) {
        guard let connection = self.connection else { return }
        while self.state == .active {
            switch connection.read(allocator: context.channel.allocator) {
            case .data(let buffer):
                context.fireChannelRead(self.wrapInboundOut(buffer))
            case .wantMore:
                self.writeOutput(context: context, flush: true)  // tickets, KeyUpdate answers
                return
            case .closed:
                self.state = .closed
                context.close(promise: nil)
                return
            case .failed(let error):
                self.fail(error, context: context)
                return
            }
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard self.state != .closed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let buffer = self.unwrapOutboundIn(data)
        if var existing = self.unflushed {
            self.unflushed = nil
            existing.writeImmutableBuffer(buffer)
            self.unflushed = existing
        } else {
            self.unflushed = buffer
        }
        if let promise { self.unflushedPromises.append(promise) }
    }

    public func flush(context: ChannelHandlerContext) {
        guard let data = self.unflushed else { return }
        let promises = self.unflushedPromises
        self.unflushed = nil
        self.unflushedPromises = []
        switch self.state {
        case .handshaking:
            if var held = self.held {
                held.writeImmutableBuffer(data)
                self.held = held
            } else {
                self.held = data
            }
            self.heldPromises += promises
        case .active:
            self.encrypt(data, promises: promises, context: context)
        case .closed:
            promises.forEach { $0.fail(ChannelError.ioOnClosedChannel) }
        }
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all, self.state == .active, let connection = self.connection {
            self.state = .closed
            connection.shutdown()  // best effort close_notify; we do not wait for the peer's
            self.writeOutput(context: context, flush: true)
        }
        self.state = .closed
        context.close(mode: mode, promise: promise)
    }

    private func encrypt(_ data: ByteBuffer, promises: [EventLoopPromise<Void>], context: ChannelHandlerContext) {
        guard let connection = self.connection else { return }
        if let error = connection.write(data) {
            promises.forEach { $0.fail(error) }
            self.fail(error, context: context)
            return
        }
        guard let output = connection.output(allocator: context.channel.allocator) else {
            promises.forEach { $0.succeed() }
            return
        }
        let promise: EventLoopPromise<Void>?
        if promises.isEmpty {
            promise = nil
        } else {
            promise = context.eventLoop.makePromise()
            promise!.futureResult.cascade(toAll: promises)
        }
        context.writeAndFlush(self.wrapOutboundOut(output), promise: promise)
    }

    private func writeOutput(context: ChannelHandlerContext, flush: Bool) {
        guard let output = self.connection?.output(allocator: context.channel.allocator) else { return }
        context.write(self.wrapOutboundOut(output), promise: nil)
        if flush { context.flush() }
    }

    private func fail(_ error: Error, context: ChannelHandlerContext) {
        self.writeOutput(context: context, flush: true)  // the alert, if any
        self.state = .closed
        self.failPending(error)
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    private func failPending(_ error: Error) {
        let promises = self.heldPromises + self.unflushedPromises
        self.held = nil
        self.unflushed = nil
        self.heldPromises = []
        self.unflushedPromises = []
        promises.forEach { $0.fail(error) }
    }
}

@available(*, unavailable)
extension TLSClientHandler: Sendable {}

extension EventLoopFuture where Value == Void {
    fileprivate func cascade(toAll promises: [EventLoopPromise<Void>]) {
        self.whenComplete { result in promises.forEach { $0.completeWith(result) } }
    }
}
