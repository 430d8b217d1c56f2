import NIOCore
import TLSClient
private import CNGHTTP2

/// One HTTP/2 connection of the load generator with one nghttp2 client session: up to `streams`
/// requests in flight (fewer if the server's SETTINGS_MAX_CONCURRENT_STREAMS says so). Bytes in
/// through `nghttp2_session_mem_recv`, frames out through `nghttp2_session_mem_send`, as in the
/// gateway's server handler; nghttp2 sends WINDOW_UPDATEs itself (automatic window updates), since
/// the bench consumes every response byte at once.
final class HTTP2BenchConnection: ChannelDuplexHandler, BenchConnection {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private struct Stream {
        var tag: RequestTag
        var sent: UInt64
        /// Request body bytes already handed to nghttp2.
        var bodyOffset = 0
        var status: Int?
        /// Timed out and reset by us: its close is not a second error.
        var abandoned = false
    }

    private let worker: LoopWorker
    private let index: Int
    private let maxStreams: Int
    private let tls: Bool
    /// Request header blocks by target, laid out once: nghttp2 copies names and values on submit.
    private let headerBlocks: [HeaderBlock]
    private let bodies: [[UInt8]]
    private var context: ChannelHandlerContext?
    private var session: OpaquePointer?
    private var streams: [Int32: Stream] = [:]
    private var ready = false
    private var goingAway = false
    private var closed = false
    private var insideSession = false
    private var error: (any Error)?

    init(worker: LoopWorker, index: Int, template: RequestTemplate, streams: Int, tls: Bool) {
        self.worker = worker
        self.index = index
        self.maxStreams = max(1, streams)
        self.tls = tls
        self.headerBlocks = template.requests.map { request in
            var pairs: [(String, String)] = [
                (":method", request.method), (":scheme", tls ? "https" : "http"),
                (":authority", template.target.authority), (":path", request.path),
                ("user-agent", "gateway-bench"),
            ]
            for header in request.headers {
                let lower = header.name.lowercased()
                // :authority carries the host (RFC 9113 §8.3.1); connection-specific fields are
                // malformed in HTTP/2 (§8.2.2).
                if ["host", "connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"].contains(lower) { continue }
                pairs.append((lower, header.value))
            }
            if request.sendsContentLength && !pairs.contains(where: { $0.0 == "content-length" }) {
                pairs.append(("content-length", String(request.body.count)))
            }
            return HeaderBlock(pairs)
        }
        self.bodies = template.requests.map(\.body)
    }

    var freeSlots: Int {
        guard self.ready, !self.goingAway, !self.closed, let session else { return 0 }
        let remote = Int(nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))
        return max(0, min(self.maxStreams, remote) - self.streams.count)
    }

    var inFlight: Int { self.streams.values.reduce(0) { $0 + ($1.abandoned ? 0 : 1) } }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        guard self.createSession() else {
            self.error = BenchError.usage("nghttp2 session could not be created")
            context.close(promise: nil)
            return
        }
        // The preface and SETTINGS wait in the TLS handler until the handshake is done.
        self.sendPending()
    }

    func channelActive(context: ChannelHandlerContext) {
        if !self.tls { self.becomeReady() }  // h2c with prior knowledge (RFC 9113 §3.3)
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSClientHandshakeCompleted {
            guard event.negotiatedProtocol == "h2" else {
                self.error = TLSClientError.alpn("server did not select h2 by ALPN (got \(event.negotiatedProtocol ?? "none"))")
                context.close(promise: nil)
                return
            }
            self.becomeReady()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func becomeReady() {
        guard !self.ready, !self.closed else { return }
        self.ready = true
        self.worker.connectionReady(self.index, self)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let session = self.session else { return }
        let buffer = self.unwrapInboundIn(data)
        self.insideSession = true
        let result = buffer.withUnsafeReadableBytes { bytes -> Int in
            guard let base = bytes.baseAddress else { return 0 }
            return nghttp2_session_mem_recv(session, base.assumingMemoryBound(to: UInt8.self), bytes.count)
        }
        self.insideSession = false
        if result < 0 {
            self.error = BenchError.usage("HTTP/2 protocol error: \(String(cString: nghttp2_strerror(Int32(result))))")
            self.close()
            return
        }
        self.sendPending()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.error == nil { self.error = error }
        self.close()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let wasReady = self.ready
        self.ready = false
        self.closed = true
        let lost = self.streams.values.filter { !$0.abandoned }.map(\.tag)
        self.streams.removeAll()
        for tag in lost { self.worker.failed(.reset, tag) }
        self.worker.connectionClosed(self.index, wasReady: wasReady, error: self.error)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let session = self.session {
            self.session = nil
            nghttp2_session_del(session)
        }
        self.context = nil
    }

    // MARK: Requests

    func send(_ request: RequestTag, nowNanos: UInt64) {
        guard let session else { return }
        let id = self.headerBlocks[request.target].withNameValues { nva in
            if self.bodies[request.target].isEmpty {
                return nghttp2_submit_request(session, nil, nva.baseAddress, nva.count, nil, nil)
            }
            var provider = nghttp2_data_provider()
            provider.read_callback = readRequestBody
            return nghttp2_submit_request(session, nil, nva.baseAddress, nva.count, &provider, nil)
        }
        guard id > 0 else {
            // Stream ids exhausted or the session is going away: take no more here.
            self.goingAway = true
            self.worker.failed(.reset, request)
            self.closeWhenIdle()
            return
        }
        self.streams[id] = Stream(tag: request, sent: nowNanos)
        self.sendPending()
    }

    /// Copies the next piece of a stream's request body into nghttp2's DATA frame buffer.
    fileprivate func readBody(_ id: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int, flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard let stream = self.streams[id] else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        let body = self.bodies[stream.tag.target]
        let count = min(length, body.count - stream.bodyOffset)
        body.withUnsafeBufferPointer { bytes in
            buffer.initialize(from: bytes.baseAddress! + stream.bodyOffset, count: count)
        }
        self.streams[id]?.bodyOffset += count
        if stream.bodyOffset + count >= body.count { flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue) }
        return count
    }

    func expire(sentBefore cutoffNanos: UInt64) {
        guard let session else { return }
        var expired: [RequestTag] = []
        for (id, stream) in self.streams where !stream.abandoned && stream.sent < cutoffNanos {
            self.streams[id]?.abandoned = true
            nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, NGHTTP2_CANCEL.rawValue)
            expired.append(stream.tag)
        }
        guard !expired.isEmpty else { return }
        self.sendPending()
        for tag in expired { self.worker.failed(.timeout, tag) }
    }

    func close() {
        guard !self.closed, let context else { return }
        self.closed = true
        if let session = self.session, self.ready {
            nghttp2_session_terminate_session(session, NGHTTP2_NO_ERROR.rawValue)
            self.sendPending(force: true)
        }
        context.close(promise: nil)
    }

    private func closeWhenIdle() {
        if self.streams.isEmpty { self.close() }
    }

    // MARK: nghttp2 plumbing

    private func createSession() -> Bool {
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else { return false }
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_header_callback(callbacks, onHeader)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, onFrameRecv)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, onStreamClose)
        var session: OpaquePointer?
        // Unretained: the session is deleted in handlerRemoved, before this handler can go away.
        let userData = Unmanaged.passUnretained(self).toOpaque()
        guard nghttp2_session_client_new(&session, callbacks, userData) == 0, let session else { return false }
        self.session = session
        var entries = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: 1 << 20),
        ]
        guard nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &entries, entries.count) == 0 else { return false }
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 16 << 20)
        return true
    }

    /// Moves nghttp2's output to the socket; never from inside `mem_recv` (its callbacks may
    /// submit new requests, which go out when it returns).
    private func sendPending(force: Bool = false) {
        guard let session = self.session, let context, !self.insideSession else { return }
        guard !self.closed || force else { return }
        var wrote = false
        while true {
            var pointer: UnsafePointer<UInt8>?
            let count = nghttp2_session_mem_send(session, &pointer)
            guard count > 0, let pointer else { break }
            // Valid only until the next nghttp2 call: copy now.
            var buffer = context.channel.allocator.buffer(capacity: count)
            buffer.writeBytes(UnsafeRawBufferPointer(start: pointer, count: count))
            context.write(self.wrapOutboundOut(buffer), promise: nil)
            wrote = true
        }
        if wrote { context.flush() }
        if !self.closed && nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            self.close()
        }
    }

    // MARK: Callbacks (from the C thunks)

    fileprivate func header(_ id: Int32, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        guard name.count == 7, name.elementsEqual(":status".utf8) else { return }
        self.streams[id]?.status = Int(String(decoding: value, as: UTF8.self))
    }

    fileprivate func goAwayReceived() {
        self.goingAway = true
    }

    fileprivate func streamClosed(_ id: Int32, errorCode: UInt32) {
        guard let stream = self.streams.removeValue(forKey: id) else { return }
        if !stream.abandoned {
            if errorCode == NGHTTP2_NO_ERROR.rawValue, let status = stream.status {
                self.worker.completed(stream.tag, status: status)
            } else {
                self.worker.failed(.reset, stream.tag)
            }
        }
        if self.goingAway && self.streams.isEmpty {
            self.context?.eventLoop.assumeIsolated().execute { [weak self] in self?.close() }
        }
    }
}

@available(*, unavailable)
extension HTTP2BenchConnection: Sendable {}

/// Names and values of one header block in a single allocation, with the `nghttp2_nv` array
/// pointing into it; nghttp2 wants mutable pointers and copies them on submit.
private final class HeaderBlock {
    private let bytes: UnsafeMutablePointer<UInt8>
    private var nva: [nghttp2_nv] = []

    init(_ pairs: [(String, String)]) {
        let total = pairs.reduce(1) { $0 + $1.0.utf8.count + $1.1.utf8.count }
        self.bytes = .allocate(capacity: total)
        var offset = 0
        func place(_ text: String) -> (UnsafeMutablePointer<UInt8>, Int) {
            let start = self.bytes + offset
            let utf8 = Array(text.utf8)
            start.initialize(from: utf8, count: utf8.count)
            offset += utf8.count
            return (start, utf8.count)
        }
        for (name, value) in pairs {
            let (n, nl) = place(name)
            let (v, vl) = place(value)
            self.nva.append(nghttp2_nv(name: n, value: v, namelen: nl, valuelen: vl, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
        }
    }

    deinit { self.bytes.deallocate() }

    func withNameValues<R>(_ body: (UnsafeBufferPointer<nghttp2_nv>) -> R) -> R {
        self.nva.withUnsafeBufferPointer(body)
    }
}

// MARK: - C thunks: unwrap the handler and forward.

private func connection(_ userData: UnsafeMutableRawPointer?) -> HTTP2BenchConnection {
    Unmanaged<HTTP2BenchConnection>.fromOpaque(userData!).takeUnretainedValue()
}

private let onHeader: nghttp2_on_header_callback = { _, frame, name, nameLength, value, valueLength, _, userData in
    guard let frame, let name, let value, frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) else { return 0 }
    connection(userData).header(
        frame.pointee.hd.stream_id,
        name: UnsafeBufferPointer(start: name, count: nameLength),
        value: UnsafeBufferPointer(start: value, count: valueLength)
    )
    return 0
}

private let onFrameRecv: nghttp2_on_frame_recv_callback = { _, frame, userData in
    guard let frame else { return 0 }
    if frame.pointee.hd.type == UInt8(NGHTTP2_GOAWAY.rawValue) { connection(userData).goAwayReceived() }
    return 0
}

private let onStreamClose: nghttp2_on_stream_close_callback = { _, streamID, errorCode, userData in
    connection(userData).streamClosed(streamID, errorCode: errorCode)
    return 0
}

private let readRequestBody: nghttp2_data_source_read_callback = { _, streamID, buffer, length, flags, _, userData in
    guard let buffer, let flags else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
    return connection(userData).readBody(streamID, into: buffer, length: length, flags: flags)
}
