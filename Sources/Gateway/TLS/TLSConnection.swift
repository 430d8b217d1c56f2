import NIOCore
private import COpenSSL

/// One server-side `SSL*` with its own BIO: the only place per-connection OpenSSL calls live.
///
/// Every method clears the thread's error queue first (it is shared by all channels on an event
/// loop) and maps OpenSSL's `int` + `SSL_get_error` into a Swift enum, so the handler and the state
/// machine never see a C return code. After each call the caller must send ``takeOutput()``:
/// handshakes, session tickets, alerts and close_notify all produce ciphertext, not only writes.
///
/// The BIO reads ciphertext straight from the socket's buffer and writes records straight into a
/// kept `ByteBuffer`: two memory BIOs copied every record twice more (socket buffer → BIO → record
/// layer, record layer → BIO → socket buffer) and spent ~2% of an HTTP/1.1 request's CPU in their
/// bookkeeping.
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

    /// Enough for a handshake flight with one certificate chain or a typical response's records.
    static let initialOutputCapacity = 4096

    /// Kept strongly: the SSL_CTXs (and the ALPN list the callbacks point into) must outlive `ssl`.
    let context: TLSServerContext
    private let ssl: OpaquePointer
    private let allocator: ByteBufferAllocator
    /// Ciphertext OpenSSL has not read yet: the socket's own buffer while a read is handled (no
    /// copy), a buffer of ours once ``keepUnreadInput()`` copied what was left; nil when empty.
    private var input: ByteBuffer?
    /// Whether `input` is still the socket's buffer, which must not be held past the read.
    private var inputIsBorrowed = false
    /// Records OpenSSL wrote and ``takeOutput()`` has not handed out yet. The storage is reused
    /// for the next records once the socket has let go of it.
    private var output: ByteBuffer

    init(context: TLSServerContext, allocator: ByteBufferAllocator) throws(TLSError) {
        ERR_clear_error()
        guard let ssl = SSL_new(context.sslContexts[0]) else {
            throw TLSError.sslSetupFailed.with(openSSLErrors: drainOpenSSLErrors())
        }
        guard let bio = BIO_new(tlsConnectionBIOMethod) else {
            SSL_free(ssl)
            throw TLSError.sslSetupFailed.with(openSSLErrors: drainOpenSSLErrors())
        }
        self.context = context
        self.ssl = ssl
        self.allocator = allocator
        self.output = allocator.buffer(capacity: Self.initialOutputCapacity)
        // Unretained, like the app data below: `deinit` frees `ssl` and with it the BIO.
        BIO_set_data(bio, Unmanaged.passUnretained(self).toOpaque())
        BIO_set_init(bio, 1)
        SSL_set_bio(ssl, bio, bio)  // one BIO both ways: `ssl` takes its one reference
        SSL_set_accept_state(ssl)
        // Per-connection user data for callbacks; unretained because `deinit` frees `ssl`, so the
        // pointer can never outlive this object.
        _ = gw_SSL_set_app_data(ssl, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        SSL_free(self.ssl)  // frees the BIO too
    }

    /// Hands received ciphertext to OpenSSL: borrowed as it is when nothing is waiting, appended
    /// otherwise. Call ``keepUnreadInput()`` before the read handling returns.
    func feed(_ buffer: ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        if self.input == nil {
            self.input = buffer
            self.inputIsBorrowed = true
        } else {
            self.input!.writeImmutableBuffer(buffer)  // copies a borrowed buffer into storage of ours first
            self.inputIsBorrowed = false
        }
    }

    /// Copies ciphertext OpenSSL has not read yet (a record cut by the socket read) out of the
    /// socket's buffer, so the channel can reuse that buffer for its next read.
    func keepUnreadInput() {
        guard self.inputIsBorrowed, let unread = self.input else { return }
        var kept = self.allocator.buffer(capacity: unread.readableBytes)
        kept.writeImmutableBuffer(unread)
        self.input = kept
        self.inputIsBorrowed = false
    }

    /// The BIO's read: as much waiting ciphertext as OpenSSL asks for, or "retry" when none waits.
    fileprivate func readCiphertext(into destination: UnsafeMutableRawBufferPointer) -> Int {
        guard let available = self.input?.readableBytes, available > 0 else { return 0 }
        let count = min(available, destination.count)
        self.input!.withUnsafeReadableBytes { bytes in
            destination.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: count)
        }
        if count == available {
            self.input = nil  // lets go of the socket's buffer as soon as it is read
            self.inputIsBorrowed = false
        } else {
            self.input!.moveReaderIndex(forwardBy: count)
        }
        return count
    }

    /// The BIO's write: records go straight into the kept output buffer.
    fileprivate func writeCiphertext(_ bytes: UnsafeRawBufferPointer) {
        if self.output.readableBytes == 0 {
            self.output.clear()  // in place once the socket let go of the last batch, else fresh storage
        }
        self.output.writeBytes(bytes)
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
        SSL_has_pending(self.ssl) == 1 || self.input != nil
    }

    /// Encrypts the whole buffer. The BIO never refuses a write and partial writes are off, so
    /// success means every byte became records in the output buffer.
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

    /// Whether OpenSSL produced ciphertext that ``takeOutput()`` would hand out.
    var hasOutput: Bool { self.output.readableBytes > 0 }

    /// Everything OpenSSL produced since the last call (possibly nothing), for the socket. The
    /// storage stays here too and is written in place again once the socket has released it.
    func takeOutput() -> ByteBuffer {
        let taken = self.output
        if self.output.capacity > TLSConnectionStateMachine.keptCapacityLimit {
            self.output = self.allocator.buffer(capacity: Self.initialOutputCapacity)
        } else {
            self.output.moveReaderIndex(to: self.output.writerIndex)
        }
        return taken
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

/// The BIO every server connection uses, made once per process. Its callbacks find their
/// connection in the BIO's data pointer (set unretained in `init`; valid because `deinit` frees
/// the SSL and with it the BIO), borrowed for the call rather than retained and released around it:
/// OpenSSL calls them several times per record.
nonisolated(unsafe) private let tlsConnectionBIOMethod: OpaquePointer = {
    guard let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "gateway TLS connection") else {
        fatalError("BIO_meth_new failed: out of memory at start-up")
    }
    _ = BIO_meth_set_read(method) { bio, destination, length in
        guard let bio, let destination, length > 0, let data = BIO_get_data(bio) else { return 0 }
        let count = Unmanaged<TLSConnection>.fromOpaque(data)._withUnsafeGuaranteedRef {
            $0.readCiphertext(into: UnsafeMutableRawBufferPointer(start: destination, count: Int(length)))
        }
        // Nothing waiting reads as "retry later", never as end of stream: the socket's EOF reaches
        // the handler as a channel event instead.
        if count == 0 {
            gw_BIO_set_retry_read(bio)
            return -1
        }
        gw_BIO_clear_retry_flags(bio)
        return Int32(count)
    }
    _ = BIO_meth_set_write(method) { bio, source, length in
        guard let bio, let source, length > 0, let data = BIO_get_data(bio) else { return 0 }
        gw_BIO_clear_retry_flags(bio)
        Unmanaged<TLSConnection>.fromOpaque(data)._withUnsafeGuaranteedRef {
            $0.writeCiphertext(UnsafeRawBufferPointer(start: source, count: Int(length)))
        }
        return length
    }
    _ = BIO_meth_set_ctrl(method) { _, command, _, _ in
        // Flushing is the handler's socket write; other controls (kTLS, push/pop, ...) do not apply.
        command == BIO_CTRL_FLUSH ? 1 : 0
    }
    return method
}()

/// SNI callback, installed on every SSL_CTX of a context. Unwraps the connection from the SSL's app
/// data (set unretained in `init`; valid because `deinit` frees the SSL) and forwards.
func tlsServerNameThunk(ssl: OpaquePointer?, alert: UnsafeMutablePointer<Int32>?, arg: UnsafeMutableRawPointer?) -> Int32 {
    guard let ssl, let data = gw_SSL_get_app_data(ssl) else { return SSL_TLSEXT_ERR_OK }
    return Unmanaged<TLSConnection>.fromOpaque(data).takeUnretainedValue().selectCertificateForServerName()
}
