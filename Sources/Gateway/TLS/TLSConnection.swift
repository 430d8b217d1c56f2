import NIOCore
private import COpenSSL

/// One server-side `SSL*` with its two memory BIOs: the only place per-connection OpenSSL calls live.
///
/// Every method clears the thread's error queue first (it is shared by all channels on an event
/// loop) and maps OpenSSL's `int` + `SSL_get_error` into a Swift enum, so the handler and the state
/// machine never see a C return code. After each call the caller must drain ``drainOutput(into:)``:
/// handshakes, session tickets, alerts and close_notify all produce ciphertext, not only writes.
final class TLSConnection {
    enum HandshakeResult: Equatable {
        case complete
        case wantRead
        case failed(TLSError)
    }

    enum ReadResult: Equatable {
        /// Plaintext was appended to the caller's buffer.
        case data
        case wantRead
        /// The peer sent close_notify (SSL_ERROR_ZERO_RETURN).
        case closeNotify
        case failed(TLSError)
    }

    enum WriteResult: Equatable {
        case written
        case failed(TLSError)
    }

    enum ShutdownResult: Equatable {
        /// Our close_notify is queued; the peer's has not arrived yet.
        case sent
        /// Both close_notify alerts have been exchanged.
        case complete
        case failed(TLSError)
    }

    /// Capacity of the handler's plaintext read buffer: one maximum TLS record (RFC 8446 §5.1), so one
    /// `SSL_read` can take a whole record.
    static let readChunkSize = 16 * 1024

    /// Kept strongly: the SSL_CTXs (and the ALPN list the callbacks point into) must outlive `ssl`.
    let context: TLSServerContext
    private let ssl: OpaquePointer
    /// Owned by `ssl` after `SSL_set_bio`; kept here only to feed and drain them.
    private let readBIO: OpaquePointer
    private let writeBIO: OpaquePointer

    init(context: TLSServerContext) throws(TLSError) {
        ERR_clear_error()
        guard let ssl = SSL_new(context.sslContexts[0]) else {
            throw TLSError.sslSetupFailed.with(openSSLErrors: drainOpenSSLErrors())
        }
        guard let readBIO = BIO_new(BIO_s_mem()), let writeBIO = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw TLSError.sslSetupFailed.with(openSSLErrors: drainOpenSSLErrors())
        }
        // An empty memory BIO must read as "retry later", not as EOF.
        _ = gw_BIO_set_mem_eof_return(readBIO, -1)
        _ = gw_BIO_set_mem_eof_return(writeBIO, -1)
        SSL_set_bio(ssl, readBIO, writeBIO)
        SSL_set_accept_state(ssl)
        self.context = context
        self.ssl = ssl
        self.readBIO = readBIO
        self.writeBIO = writeBIO
        // Per-connection user data for callbacks; unretained because `deinit` frees `ssl`, so the
        // pointer can never outlive this object.
        _ = gw_SSL_set_app_data(ssl, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        SSL_free(self.ssl)  // frees both BIOs too
    }

    /// Hands received ciphertext to OpenSSL. A memory BIO grows as needed, so this never fails short.
    func feed(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { bytes in
            guard let base = bytes.baseAddress, bytes.count > 0 else { return }
            var offset = 0
            while offset < bytes.count {
                let chunk = Int32(clamping: bytes.count - offset)
                let written = BIO_write(self.readBIO, base + offset, chunk)
                guard written > 0 else { return }
                offset += Int(written)
            }
        }
    }

    func doHandshake() -> HandshakeResult {
        clearErrorQueue()
        let rc = SSL_do_handshake(self.ssl)
        if rc == 1 { return .complete }
        switch SSL_get_error(self.ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wantRead
        default:
            return .failed(TLSError.handshakeFailed.with(openSSLErrors: drainOpenSSLErrors()))
        }
    }

    /// One `SSL_read` appending to `buffer`'s writable bytes (no intermediate copy). The caller keeps
    /// at least one writable byte, so this never grows the buffer.
    func read(into buffer: inout ByteBuffer) -> ReadResult {
        clearErrorQueue()
        var rc: Int32 = 0
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 1) { bytes in
            rc = SSL_read(self.ssl, bytes.baseAddress, Int32(clamping: bytes.count))
            return rc > 0 ? Int(rc) : 0
        }
        if rc > 0 { return .data }
        switch SSL_get_error(self.ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wantRead
        case SSL_ERROR_ZERO_RETURN:
            return .closeNotify
        default:
            return .failed(TLSError.readFailed.with(openSSLErrors: drainOpenSSLErrors()))
        }
    }

    /// Whether another `SSL_read` could make progress: decrypted bytes or a record OpenSSL holds, or
    /// ciphertext still in the read BIO. False means the next `SSL_read` would only say "want read".
    var hasBufferedInput: Bool {
        SSL_has_pending(self.ssl) == 1 || gw_BIO_pending(self.readBIO) > 0
    }

    /// Encrypts the whole buffer. Memory BIOs never block and partial writes are off, so success
    /// means every byte became records in the write BIO.
    func write(_ buffer: ByteBuffer) -> WriteResult {
        var failure: TLSError? = nil
        buffer.withUnsafeReadableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            var offset = 0
            while offset < bytes.count {
                clearErrorQueue()
                let rc = SSL_write(self.ssl, base + offset, Int32(clamping: bytes.count - offset))
                guard rc > 0 else {
                    _ = SSL_get_error(self.ssl, rc)
                    failure = TLSError.writeFailed.with(openSSLErrors: drainOpenSSLErrors())
                    return
                }
                offset += Int(rc)
            }
        }
        if let failure { return .failed(failure) }
        return .written
    }

    /// Queues our close_notify (RFC 8446 §6.1).
    func shutdown() -> ShutdownResult {
        clearErrorQueue()
        let rc = SSL_shutdown(self.ssl)
        switch rc {
        case 1: return .complete
        case 0: return .sent
        default:
            _ = SSL_get_error(self.ssl, rc)
            return .failed(TLSError.writeFailed.with(openSSLErrors: drainOpenSSLErrors()))
        }
    }

    /// Whether OpenSSL produced ciphertext that ``drainOutput(into:)`` would move.
    var hasOutput: Bool { gw_BIO_pending(self.writeBIO) > 0 }

    /// Appends everything OpenSSL produced to `buffer`, read directly from the write BIO.
    func drainOutput(into buffer: inout ByteBuffer) {
        while true {
            let wanted = gw_BIO_pending(self.writeBIO)
            guard wanted > 0 else { return }
            let read = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: wanted) { bytes in
                Int(max(0, BIO_read(self.writeBIO, bytes.baseAddress, Int32(clamping: bytes.count))))
            }
            if read == 0 { return }
        }
    }

    /// Which certificate the handshake uses (index into `context.settings.certificates`).
    private(set) var certificateIndex = 0

    /// Switches to the certificate matching the SNI name. Unknown or absent names keep the default
    /// certificate rather than failing, so clients without SNI are still served.
    fileprivate func selectCertificateForServerName() -> Int32 {
        guard let namePointer = SSL_get_servername(self.ssl, TLSEXT_NAMETYPE_host_name),
              let index = self.context.certificateIndex(forServerName: String(cString: namePointer)),
              index != 0
        else { return SSL_TLSEXT_ERR_OK }
        // Copies the certificate and key of that SSL_CTX into this SSL; other settings are identical.
        guard SSL_set_SSL_CTX(self.ssl, self.context.sslContexts[index]) != nil else {
            return SSL_TLSEXT_ERR_ALERT_FATAL
        }
        self.certificateIndex = index
        return SSL_TLSEXT_ERR_OK
    }

    /// What the handler reports once the handshake is complete.
    var handshakeSummary: TLSHandshakeCompleted {
        var alpn: UnsafePointer<UInt8>? = nil
        var alpnLength: UInt32 = 0
        SSL_get0_alpn_selected(self.ssl, &alpn, &alpnLength)
        let negotiated = alpn.flatMap {
            alpnLength > 0 ? String(decoding: UnsafeBufferPointer(start: $0, count: Int(alpnLength)), as: UTF8.self) : nil
        }
        let version = SSL_get_version(self.ssl).map { String(cString: $0) } ?? "unknown"
        let serverName = SSL_get_servername(self.ssl, TLSEXT_NAMETYPE_host_name).map { String(cString: $0) }
        return TLSHandshakeCompleted(
            negotiatedProtocol: negotiated,
            version: version,
            serverName: serverName,
            resumed: SSL_session_reused(self.ssl) == 1
        )
    }
}

/// Empties the thread's OpenSSL error queue before a call whose failure is read from it. Peeking
/// first skips clearing every slot of the queue, which is empty on the happy path.
@inline(__always)
private func clearErrorQueue() {
    if ERR_peek_error() != 0 { ERR_clear_error() }
}

/// SNI callback, installed on every SSL_CTX of a context. Unwraps the connection from the SSL's app
/// data (set unretained in `init`; valid because `deinit` frees the SSL) and forwards.
func tlsServerNameThunk(ssl: OpaquePointer?, alert: UnsafeMutablePointer<Int32>?, arg: UnsafeMutableRawPointer?) -> Int32 {
    guard let ssl, let data = gw_SSL_get_app_data(ssl) else { return SSL_TLSEXT_ERR_OK }
    return Unmanaged<TLSConnection>.fromOpaque(data).takeUnretainedValue().selectCertificateForServerName()
}
