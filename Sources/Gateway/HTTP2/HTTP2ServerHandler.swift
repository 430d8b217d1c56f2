import NIOCore
import NIOHTTP1
private import CNGHTTP2

/// Serves HTTP/2 on one client connection with one nghttp2 server session: plaintext bytes in via
/// `nghttp2_session_mem_recv`, frames out via `nghttp2_session_mem_send`. Each stream becomes a
/// request in the same pipeline as HTTP/1.1 (`HTTP2Stream`). nghttp2 does the framing, HPACK and
/// flow control; RFC 9113's message checks (pseudo-headers, connection-specific fields,
/// `content-length` vs DATA, field bytes) are the stream's (`HTTP2RequestRules`), and this handler
/// adds the gateway's limits and ties flow control to upstream backpressure.
final class HTTP2ServerHandler: ChannelDuplexHandler, LoopTimerOwner, TickFlushing {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let services: ConnectionServices
    let settings: HTTP2Settings
    private(set) var context: ChannelHandlerContext?
    /// The socket's writability, kept from `channelWritabilityChanged` (NIO fires it in the same
    /// call that flips it), so the send loop and every stream's check read a field, not the channel.
    private var socketIsWritable = true
    private var snapshot = RuntimeSnapshot()
    /// This loop's iteration stamp (`gateway_event_loop_tick_seconds`); made on the loop that runs
    /// the handler.
    private let tickSlot = EventLoopTicks.currentSlot()
    private var session: OpaquePointer?
    private let streams = StreamTable<HTTP2Stream>()
    /// The stream whose header block is being decoded: a block arrives in one piece (RFC 9113
    /// §4.3), so its fields skip the table lookup. Cleared when the block or stream ends. Not
    /// retained (the table holds the stream until it ends), so a field costs no retain and release.
    private var receivingHeaders: Unmanaged<HTTP2Stream>?
    private var receivingID: Int32 = 0
    /// Closed streams nothing else holds, kept for the next ones: a steady connection allocates
    /// no stream object per request.
    private var spareStreams: [HTTP2Stream] = []
    /// As many as the client may have open at once (up to a bound for configurations that allow
    /// thousands): a client that fills its concurrency closes a whole batch in one read and opens
    /// the next batch in the next, and a smaller cap made every stream past it a new object and a
    /// new field buffer. Memory stays within what the connection's busiest moment already used,
    /// for as long as the connection lives (idle connections are closed).
    private let maxSpareStreams: Int
    /// Closed stream objects kept for reuse (tests).
    var spareStreamCount: Int { self.spareStreams.count }
    private(set) var peer = PeerAddress.unknown
    /// Streams whose upstream side starts after the current read is decoded (see HTTP/1's
    /// `pendingStart`: a malformed frame in the same read is refused before anything goes upstream).
    private var pendingStarts: [HTTP2Stream] = []
    /// `pendingStarts` being started: the two arrays swap so that neither is reallocated per read.
    private var startsInProgress: [HTTP2Stream] = []
    /// Request body bytes to acknowledge with WINDOW_UPDATE after `mem_recv` returns.
    private var pendingConsume: [(Int32, Int)] = []
    private var emptyData: EmptyDataFrameGuard
    /// The client broke a flood limit: the GOAWAY says ENHANCE_YOUR_CALM.
    private var flooded = false
    private var goingAway = false
    private var closed = false
    private var insideSession = false
    /// Reads the time for request starts and the idle and stall deadlines (a test clock in tests).
    let clock: () -> NIODeadline
    /// With no stream open, the connection goes away at this deadline.
    private var idleDeadline: NIODeadline?
    /// Set when every stream stalled: the connection is closed by then even if its last
    /// responses could not be delivered.
    private var closeDeadline: NIODeadline?
    /// One timer per connection checks every deadline (idle, each stream's body stall), so a
    /// request costs no timer of its own: streams only store their deadline.
    private var checkTimer: LoopTimers.Timer?
    private var checkAt: NIODeadline?
    /// Streams whose stalled body was answered with 408: reset with NO_ERROR once that response is
    /// out (RFC 9113 §8.1), as the rest of the body is no longer wanted.
    private var pendingResets: [Int32] = []
    /// Streams whose response buffer fell below the low watermark during `mem_send`.
    private var drainedStreams: [HTTP2Stream] = []
    private var drainedInProgress: [HTTP2Stream] = []
    /// Between a read from the client and its `channelReadComplete`, which drains the session
    /// once for everything that read caused.
    private var reading = false
    /// A drain is queued in the loop's `TickFlushes`: the responses that upstream reads finish in
    /// one tick (each stream has its own upstream connection) leave in one write, as HAProxy's
    /// `h2_send` does, instead of one TLS record and one `write` per stream.
    private var flushQueued = false
    /// nghttp2's output of one drain, copied out of its memory (valid only until its next call)
    /// and written as one buffer. Kept while small: once the TLS layer has encrypted it, the
    /// storage is unique again and the next drain reuses it.
    private var outbound = ByteBuffer()
    /// The `nghttp2_nv` array and field bytes of the response being submitted (nghttp2 copies
    /// them on submit, so the next response reuses the memory).
    private var headerScratch = HeaderScratch()
    /// The last stream's host and path text, reused while the next stream sends the same bytes
    /// (`RecentText`).
    var recentHost = RecentText()
    private var recentPath = RecentText()
    /// nghttp2's allocator for this session (it outlives the session: `nghttp2_session_del` frees
    /// into it).
    private let blockPool = HTTP2BlockPool()
    /// The channel's allocator, read once: each `context.channel` is a retain and a release.
    private(set) var allocator = ByteBufferAllocator()

    /// Not once torn down: a stream an exchange still drives would be held by the handler it holds.
    func noteDrained(_ stream: HTTP2Stream) {
        if self.session != nil { self.drainedStreams.append(stream) }
    }

    /// - Parameter clock: a test's clock; by default the loop's iteration stamp (`LoopSlot.now()`).
    init(services: ConnectionServices, settings: HTTP2Settings, clock: (() -> NIODeadline)? = nil) {
        self.services = services
        self.settings = settings
        self.maxSpareStreams = min(settings.maxConcurrentStreams, 256)
        self.clock = clock ?? { [tickSlot] in tickSlot.now() }
        self.emptyData = EmptyDataFrameGuard(limit: settings.maxEmptyFrames)
    }

    deinit {
        if let session = self.session { nghttp2_session_del(session) }
        self.headerScratch.deallocate()
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.allocator = context.channel.allocator
        self.socketIsWritable = context.channel.isWritable
        self.services.observability.metrics.connections.increment([self.services.listener.name, "h2"])
        self.peer = PeerAddress(context.channel.remoteAddress)
        guard self.createSession() else {
            context.close(promise: nil)
            return
        }
        self.sendPending()
        self.becameIdle()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.services.observability.metrics.connections.increment([self.services.listener.name, "h2"], by: -1)
        self.teardown()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.teardown()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.tickSlot.ioBegins()
        guard let session = self.session else { return }
        let buffer = self.unwrapInboundIn(data)
        self.reading = true
        self.insideSession = true
        let result = buffer.withUnsafeReadableBytes { bytes -> Int in
            guard let base = bytes.baseAddress else { return 0 }
            return nghttp2_session_mem_recv(session, base.assumingMemoryBound(to: UInt8.self), bytes.count)
        }
        self.insideSession = false
        if result < 0 {
            // Bad preface, flood, or a connection error nghttp2 could not express as GOAWAY itself.
            let flood = self.flooded || result == Int(NGHTTP2_ERR_FLOODED.rawValue)
            let code = flood ? NGHTTP2_ENHANCE_YOUR_CALM.rawValue : NGHTTP2_PROTOCOL_ERROR.rawValue
            nghttp2_session_terminate_session(session, code)
            self.sendPending()
            self.close()
            return
        }
        self.applyPendingConsume()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.startPendingStreams()
        self.reading = false
        // Drained with the rest of the tick's output rather than now: responses that upstream
        // reads later in this tick add for this client then leave in the same TLS record and
        // `write` (draining here made a second write per tick for about one client read in two).
        self.flushSoon()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.socketIsWritable = context.channel.isWritable
        if self.socketIsWritable {
            self.sendPending()
            for stream in self.streams.all { stream.connectionWritabilityChanged() }
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            self.goAway()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.close()
    }

    // MARK: - Session

    private func createSession() -> Bool {
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else { return false }
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, onBeginHeaders)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, onHeader)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, onFrameRecv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, onDataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, onStreamClose)
        nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, onBeginFrame)

        var option: OpaquePointer?
        guard nghttp2_option_new(&option) == 0, let option else { return false }
        defer { nghttp2_option_del(option) }
        // Window updates are sent when the upstream has taken the bytes, not when they arrive.
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_stream_reset_rate_limit(option, self.settings.resetBurst, self.settings.resetRatePerSecond)
        nghttp2_option_set_max_continuations(option, self.settings.maxContinuations)
        nghttp2_option_set_max_outbound_ack(option, self.settings.maxOutboundAck)
        nghttp2_option_set_max_settings(option, self.settings.maxSettingsEntries)
        // RFC 9113 §8's request checks are the stream's (`HTTP2RequestRules`, the same verdicts):
        // nghttp2's looked every field up and checked it a second time.
        nghttp2_option_set_no_http_messaging(option, 1)

        var session: OpaquePointer?
        let userData = Unmanaged.passUnretained(self).toOpaque()
        var allocator = nghttp2_mem(
            mem_user_data: Unmanaged.passUnretained(self.blockPool).toOpaque(),
            malloc: poolMalloc, free: poolFree, calloc: poolCalloc, realloc: poolRealloc
        )
        guard nghttp2_session_server_new3(&session, callbacks, userData, option, &allocator) == 0, let session else {
            return false
        }
        self.session = session

        var entries = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue),
                                   value: UInt32(self.settings.maxConcurrentStreams)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue),
                                   value: UInt32(self.settings.initialWindowSize)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue),
                                   value: UInt32(self.settings.maxHeaderListSize)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            // RFC 9218 §2.1: RFC 7540's priority tree is not used (HAProxy ignores it too). nghttp2
            // then schedules by urgency alone and keeps no closed streams for the tree.
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES.rawValue), value: 1),
        ]
        if self.settings.enableConnectProtocol {
            entries.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL.rawValue), value: 1))
        }
        guard nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &entries, entries.count) == 0 else {
            return false
        }
        // A connection-level window as large as the streams' together, so one slow stream's
        // unconsumed bytes do not stall the others.
        let connectionWindow = Int32(clamping: self.settings.initialWindowSize * 4)
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, connectionWindow)
        return true
    }

    /// Drains nghttp2's output into the socket while the socket takes it (the rest stays queued
    /// in nghttp2 until the channel is writable again), then closes when the session is done.
    func sendPending() {
        guard let session = self.session, let context = self.context, !self.insideSession else { return }
        self.applyPendingConsume()
        var gathering = false
        while self.socketIsWritable {
            var pointer: UnsafePointer<UInt8>?
            // Data callbacks run inside mem_send: anything they trigger waits until it returns.
            self.insideSession = true
            let count = nghttp2_session_mem_send(session, &pointer)
            self.insideSession = false
            if count < 0 {
                self.close()
                return
            }
            guard count > 0, let pointer else {
                // Nothing left to send: every response head submitted so far has been encoded
                // (nghttp2 encodes a HEADERS frame when it sends it), so none still points into
                // the retained field bytes.
                self.headerScratch.releaseRetained()
                break
            }
            if !gathering {
                // Reuses the storage unless the last write still holds it.
                self.outbound.clear(minimumCapacity: count)
                gathering = true
            }
            // One frame per call: gathered, so a tick's responses leave in one write.
            self.outbound.writeBytes(UnsafeRawBufferPointer(start: pointer, count: count))
            if self.outbound.readableBytes >= Self.outboundChunk {
                // A large response goes out in chunks, so writability is checked between them.
                context.writeAndFlush(self.wrapOutboundOut(self.outbound), promise: nil)
                gathering = false
            }
        }
        if gathering { context.writeAndFlush(self.wrapOutboundOut(self.outbound), promise: nil) }
        if self.outbound.capacity > Self.outboundChunk * 2 { self.outbound = ByteBuffer() }
        if !self.drainedStreams.isEmpty {
            swap(&self.drainedStreams, &self.drainedInProgress)
            for stream in self.drainedInProgress { stream.responseBufferDrained() }
            self.drainedInProgress.removeAll(keepingCapacity: true)
        }
        if !self.pendingResets.isEmpty {
            // Each response's last DATA frame is serialized already: its reset follows it.
            let resets = self.pendingResets
            self.pendingResets.removeAll()
            for id in resets where self.streams[id] != nil {
                nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, NGHTTP2_NO_ERROR.rawValue)
            }
            self.sendPending()
            return
        }
        if nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            self.close()
        }
    }

    /// Bytes gathered before they are written out within one drain: a TLS record's worth.
    private static let outboundChunk = 16 * 1024

    /// Drains the session at the end of this event-loop tick, once however many streams ask (while
    /// a client read is being handled, its `channelReadComplete` asks once for all of it).
    func flushSoon() {
        guard !self.reading, !self.flushQueued, self.context != nil else { return }
        self.flushQueued = true
        self.services.loop.flushes.add(self)
    }

    func flushAtTickEnd() {
        self.flushQueued = false
        self.sendPending()
    }

    private func applyPendingConsume() {
        guard let session = self.session, !self.pendingConsume.isEmpty else { return }
        for (streamID, count) in self.pendingConsume {
            nghttp2_session_consume(session, streamID, count)
        }
        self.pendingConsume.removeAll(keepingCapacity: true)
    }

    /// Request body bytes the upstream has taken: open the client's window by that much.
    func consume(streamID: Int32, count: Int) {
        guard count > 0, let session = self.session else { return }
        if self.insideSession {
            self.pendingConsume.append((streamID, count))
        } else {
            nghttp2_session_consume(session, streamID, count)
            self.flushSoon()
        }
    }

    private func startPendingStreams() {
        guard !self.pendingStarts.isEmpty else { return }
        swap(&self.pendingStarts, &self.startsInProgress)
        // Moved out one by one, in order: reversing costs about one reference count per stream, the
        // `for` over the array it replaced two.
        self.startsInProgress.reverse()
        while let stream = self.startsInProgress.popLast() { stream.startProxy() }
    }

    func deferStart(_ stream: HTTP2Stream) {
        if self.session != nil { self.pendingStarts.append(stream) }
    }

    // MARK: - Responses (called by streams)

    /// Submits a response head; `hasBody` false ends the stream with the HEADERS frame. Fields go
    /// through `HTTP2ResponseField` while they are copied into the connection's scratch memory.
    func submitResponse(for stream: HTTP2Stream, status: Int, headers: HTTPHeaders, hasBody: Bool) {
        guard let session = self.session else { return }
        self.headerScratch.fill(status: status, headers: headers, retain: !self.insideSession, now: self.clock()) { nva, count in
            Self.submit(session, stream, nva, count, hasBody: hasBody)
        }
        self.answered(stream, hasBody: hasBody)
    }

    /// `submitResponse` for a proxied response: its fields are rewritten straight into the scratch.
    func submitResponse(for stream: HTTP2Stream, forwarded: ForwardedResponseHead, hasBody: Bool) {
        guard let session = self.session else { return }
        self.headerScratch.fill(forwarded, retain: !self.insideSession, now: self.clock()) { nva, count in
            Self.submit(session, stream, nva, count, hasBody: hasBody)
        }
        self.answered(stream, hasBody: hasBody)
    }

    private static func submit(
        _ session: OpaquePointer, _ stream: HTTP2Stream, _ nva: UnsafeMutablePointer<nghttp2_nv>, _ count: Int, hasBody: Bool
    ) {
        if hasBody {
            var provider = nghttp2_data_provider()
            // The stream itself, unretained, so a DATA read finds it without a lookup: nghttp2
            // reads a stream's data only while it is open, and `streams` holds it until it closes.
            provider.source.ptr = Unmanaged.passUnretained(stream).toOpaque()
            provider.read_callback = readResponseData
            _ = nghttp2_submit_response(session, stream.id, nva, count, &provider)
        } else {
            _ = nghttp2_submit_response(session, stream.id, nva, count, nil)
        }
    }

    private func answered(_ stream: HTTP2Stream, hasBody: Bool) {
        if !hasBody, stream.resetsWhenAnswered, self.streams[stream.id] === stream {
            self.pendingResets.append(stream.id)
        }
    }

    /// Ends a stream whose response is complete while its request is not (RFC 9113 §8.1).
    func resetWithoutError(_ streamID: Int32) {
        guard let session = self.session else { return }
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, NGHTTP2_NO_ERROR.rawValue)
        self.flushSoon()
    }

    func resumeData(streamID: Int32) {
        guard let session = self.session else { return }
        nghttp2_session_resume_data(session, streamID)
    }

    func resetStream(_ streamID: Int32, internalError: Bool) {
        guard let session = self.session else { return }
        let code = internalError ? NGHTTP2_INTERNAL_ERROR.rawValue : NGHTTP2_CANCEL.rawValue
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, code)
        self.flushSoon()
    }

    var channelIsWritable: Bool { self.context != nil && self.socketIsWritable }

    /// Logs and counts a stream's request (`Observability.finished`). Here rather than in the
    /// stream, which reached the services through its connection with a retain and a release each.
    func finished(_ record: borrowing RequestRecord) {
        self.services.observability.finished(record, tlsVersion: self.services.tlsVersion)
    }

    /// The config snapshot for a stream or request starting now (the holder's lock only after a
    /// reload).
    func runtime() -> GatewayRuntime {
        if let runtime = self.snapshot.unchanged(at: self.services.holder.generation) { return runtime }
        return self.snapshot.current(from: self.services.holder)
    }

    /// Whether the client may send more of this stream's body without a WINDOW_UPDATE from us.
    func clientMaySend(streamID: Int32) -> Bool {
        guard let session = self.session else { return false }
        return nghttp2_session_get_stream_local_window_size(session, streamID) > 0
            && nghttp2_session_get_local_window_size(session) > 0
    }

    // MARK: - Deadlines

    /// A stream expects more request body by `deadline`.
    func bodyDeadlineSet(_ deadline: NIODeadline) {
        self.scheduleCheck(by: deadline)
    }

    private func becameIdle() {
        let deadline = self.clock() + self.runtime().traffic.idleTimeout
        self.idleDeadline = deadline
        self.scheduleCheck(by: deadline)
    }

    /// Makes sure the check runs no later than `deadline`. Deadlines only move later while a
    /// check is pending, so this rarely reschedules: the check itself re-arms for the next one.
    private func scheduleCheck(by deadline: NIODeadline) {
        if let at = self.checkAt, at <= deadline { return }
        guard self.context != nil, !self.closed, self.session != nil else { return }
        let timers = self.services.loop.timers
        timers.disarm(&self.checkTimer)
        self.checkAt = deadline
        // The timer holds the handler strongly (a weak reference would give it a side table and
        // slow every retain and release of it); `teardown` disarms it.
        self.checkTimer = timers.arm(self, in: deadline - self.clock())
    }

    func timerFired(_ timer: LoopTimers.Timer, tag: NIODeadline) {
        guard timer == self.checkTimer else { return }
        self.runChecks()
    }

    /// Goes away when idle, answers streams whose body stalled, and, when every open stream
    /// stalled, sends the client away too: such a connection is being held, not used.
    private func runChecks() {
        let due = self.checkAt
        self.checkAt = nil
        self.checkTimer = nil
        guard !self.closed, self.session != nil else { return }
        // The timer fires at or after `due`, but the iteration's stamp (`clock`) may predate it:
        // a check that found its own deadline not yet reached would re-arm for the few
        // nanoseconds left, fire again in the same iteration, and never let the iteration end.
        let now = max(self.clock(), due ?? .uptimeNanoseconds(0))
        if let closeBy = self.closeDeadline, closeBy <= now {
            self.close()
            return
        }
        var next = self.closeDeadline
        if self.streams.isEmpty, let idle = self.idleDeadline {
            if idle <= now {
                self.goAway()
                return
            }
            next = min(next ?? idle, idle)
        }
        var stalled: [HTTP2Stream] = []
        let open = self.streams.count
        for stream in self.streams.all {
            guard let deadline = stream.bodyDeadline(now: now) else { continue }
            if deadline <= now {
                stalled.append(stream)
            } else {
                next = min(next ?? deadline, deadline)
            }
        }
        for stream in stalled { stream.bodyStalled() }
        if !stalled.isEmpty && stalled.count == open && !self.goingAway {
            let closeBy = now + self.runtime().traffic.idleTimeout
            self.closeDeadline = closeBy
            next = min(next ?? closeBy, closeBy)
            self.goAway()
        }
        if let next, !self.closed { self.scheduleCheck(by: next) }
    }

    // MARK: - Callbacks from nghttp2 (via the C thunks below)

    fileprivate func beginStream(_ id: Int32) {
        self.idleDeadline = nil
        let stream: HTTP2Stream
        if let spare = self.spareStreams.popLast() {
            spare.reuse(id: id)
            stream = spare
        } else {
            stream = HTTP2Stream(id: id, connection: self)
        }
        self.streams.insert(stream, id: id)
        self.receivingHeaders = Unmanaged.passUnretained(stream)
        self.receivingID = id
    }

    /// Returns false when the field makes the request malformed: the stream has been reset.
    fileprivate func header(_ id: Int32, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>, trailer: Bool) -> Bool {
        let stream: Unmanaged<HTTP2Stream>
        if let receiving = self.receivingHeaders, self.receivingID == id {
            stream = receiving
        } else if let found = self.streams[id] {
            stream = Unmanaged.passUnretained(found)
        } else {
            return true
        }
        let accepted = stream._withUnsafeGuaranteedRef {
            $0.isRefused || $0.addHeader(
                name: name, value: value, trailer: trailer, connectProtocol: self.settings.enableConnectProtocol,
                maxHeaderListSize: self.settings.maxHeaderListSize, recentPath: &self.recentPath
            )
        }
        if !accepted { self.refuse(stream.takeUnretainedValue()) }
        return accepted
    }

    fileprivate func headersComplete(_ id: Int32, endStream: Bool) {
        // Usually the stream whose fields just arrived: no lookup.
        let receiving = self.receivingID == id ? self.receivingHeaders?.takeUnretainedValue() : nil
        self.receivingHeaders = nil
        guard let stream = receiving ?? self.streams[id], !stream.isRefused else { return }
        if stream.headComplete {
            // Trailers: dropped (upstream requests are re-framed), but they end the request.
            guard stream.trailersEnded(endStream: endStream) else { return self.refuse(stream) }
            if endStream { stream.requestEnded() }
            return
        }
        guard stream.headEnded(endStream: endStream) else { return self.refuse(stream) }
        if let priority = stream.requestedPriority, let session = self.session {
            // RFC 9218 urgency for nghttp2's scheduler, as its own checks applied it.
            var extpri = nghttp2_extpri(urgency: UInt32(priority.urgency), inc: priority.incremental ? 1 : 0)
            _ = nghttp2_session_change_extpri_stream_priority(session, id, &extpri, 0)
        }
        stream.headersComplete(endStream: endStream)
    }

    fileprivate func data(_ id: Int32, _ bytes: UnsafeBufferPointer<UInt8>) {
        guard let stream = self.streams[id], let context else { return }
        guard stream.bodyAllowed(count: bytes.count) else {
            // Dropped, but its room in the connection's window is given back.
            self.consume(streamID: id, count: bytes.count)
            self.refuse(stream)
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(UnsafeRawBufferPointer(bytes))
        stream.bodyReceived(buffer)
    }

    fileprivate func dataEnded(_ id: Int32) {
        guard let stream = self.streams[id] else { return }
        guard stream.endAllowed() else { return self.refuse(stream) }
        stream.requestEnded()
    }

    /// A malformed request (RFC 9113 §8.1.1): the stream is reset with PROTOCOL_ERROR, as
    /// nghttp2's own checks did, and nothing more of it is read. Once per stream.
    private func refuse(_ stream: HTTP2Stream) {
        guard !stream.isRefused else { return }
        stream.refuse()
        guard let session = self.session else { return }
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream.id, NGHTTP2_PROTOCOL_ERROR.rawValue)
        self.flushSoon()
    }

    fileprivate func streamClosed(_ id: Int32) {
        if self.receivingID == id { self.receivingHeaders = nil }
        guard var stream = self.streams.remove(id) else { return }
        stream.closed()
        // Only when the handler holds the last reference: an exchange, a deferred start or a
        // drained-list entry still holding it would otherwise reach the next stream's request.
        if stream.isReusable, self.spareStreams.count < self.maxSpareStreams, isKnownUniquelyReferenced(&stream) {
            self.spareStreams.append(stream)
        }
        if self.streams.isEmpty {
            if self.goingAway {
                // Usually inside mem_send, whose output (this stream's last DATA) is not written
                // yet: close on the next loop tick, after it.
                self.context?.eventLoop.assumeIsolated().execute { self.finalGoAwayAndClose() }
            } else {
                self.becameIdle()
            }
        }
    }

    /// Returns false to tear the session down with ENHANCE_YOUR_CALM (empty DATA flood).
    fileprivate func frameBegins(type: UInt8, length: Int, flags: UInt8) -> Bool {
        let kind: EmptyDataFrameGuard.FrameKind
        switch UInt32(type) {
        case NGHTTP2_DATA.rawValue:
            kind = .data(length: length, endStream: flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0)
        case NGHTTP2_HEADERS.rawValue:
            kind = .headers
        default:
            kind = .other
        }
        if self.emptyData.record(kind) { return true }
        self.flooded = true
        return false
    }

    fileprivate func readResponse(
        _ stream: HTTP2Stream, into buffer: UnsafeMutablePointer<UInt8>, length: Int, flags: UnsafeMutablePointer<UInt32>
    ) -> Int {
        let id = stream.id
        switch stream.readResponse(into: UnsafeMutableRawBufferPointer(start: buffer, count: length)) {
        case .bytes(let count, let end):
            if end {
                flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
                if stream.resetsWhenAnswered { self.pendingResets.append(id) }
            }
            return count
        case .deferred:
            return Int(NGHTTP2_ERR_DEFERRED.rawValue)
        }
    }

    // MARK: - Lifecycle

    /// Graceful shutdown (RFC 9113 §6.8): a GOAWAY with the maximum stream id first, so requests
    /// already in flight on the wire are still accepted; once the streams are done, the final
    /// GOAWAY names the last stream processed and the connection closes.
    func goAway() {
        guard let session = self.session, !self.goingAway else { return }
        // Responses already submitted (a 408 from the same check) go out before the GOAWAY, which
        // some clients take as the end of the connection.
        self.sendPending()
        self.goingAway = true
        nghttp2_submit_shutdown_notice(session)
        self.sendPending()
        if self.streams.isEmpty { self.finalGoAwayAndClose() }
    }

    private func finalGoAwayAndClose() {
        if let session = self.session {
            nghttp2_submit_goaway(
                session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session),
                NGHTTP2_NO_ERROR.rawValue, nil, 0
            )
            self.sendPending()
        }
        self.close()
    }

    func close() {
        guard !self.closed, let context else { return }
        self.closed = true
        let loopBound = context.loopBound
        // Let queued frames (GOAWAY, last DATA) reach the socket first.
        context.writeAndFlush(self.wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).assumeIsolated()
            .whenComplete { _ in loopBound.value.close(promise: nil) }
    }

    private func teardown() {
        self.services.loop.timers.disarm(&self.checkTimer)
        self.checkAt = nil
        // Every list that holds streams is emptied: each stream holds the handler (strongly).
        self.pendingStarts.removeAll()
        self.receivingHeaders = nil
        self.spareStreams.removeAll()
        self.drainedStreams.removeAll()
        for stream in self.streams.removeAll() { stream.closed() }
        if let session = self.session {
            self.session = nil
            nghttp2_session_del(session)
        }
    }
}

/// Memory for one response's `nghttp2_nv` array and the bytes it points at, grown to the largest
/// response head seen and reused. It is the sink of the response rewrite
/// (`HeaderRewriter.rewriteResponseFields`), so a forwarded head's fields land here without an
/// `HTTPHeaders` in between.
///
/// nghttp2 copies a response's names and values on submit, field by field, lowercasing each name
/// again, unless told not to (`NGHTTP2_NV_FLAG_NO_COPY_*`); then the bytes must stay put until it
/// encodes the frame, which is when it sends it, not when it is submitted. So a submitted head's
/// bytes are copied, in one piece, into `retained`, memory that never moves and is only reused once
/// the session has sent everything (`releaseRetained`); a head that does not fit there, or one
/// submitted from inside an nghttp2 call (a local answer from a callback), is left to nghttp2 to
/// copy.
private struct HeaderScratch: HeadFieldSink {
    private var fields: UnsafeMutablePointer<nghttp2_nv>?
    private var fieldCapacity = 0
    private var bytes: UnsafeMutablePointer<UInt8>?
    private var byteCapacity = 0
    /// Bytes and fields laid out for the response being filled.
    private var used = 0
    private var count = 0
    /// The field bytes of the heads submitted since the session last sent everything.
    private var retained: UnsafeMutablePointer<UInt8>?
    private var retainedUsed = 0
    /// The fields being copied are an upstream head's lines, which the strict grammar checked
    /// (`HTTP1Grammar.readFields`: token names, field-vchar values) and the rewrite filtered
    /// (connection-specific names dropped, values trimmed): copied without checking them again.
    private var copyingCheckedLines = false
    /// Ten proxied heads (~200–400 bytes each), a tick's worth on a busy connection; kept for the
    /// connection's life, so small: heads beyond it are copied by nghttp2 as before.
    static let retainedCapacity = 4 * 1024
    /// When the fields that change per response last went out indexed.
    private var changingFieldsIndexedAt = NIODeadline.distantPast
    /// A field that changes per response goes out never indexed (`changesPerResponse`), except on
    /// the first response and then on one every this often: indexed then, its name stays in the
    /// HPACK table for the others to refer to by index, where a name outside the static table
    /// (`x-request-id`) was sent and Huffman-coded again on each (~10 bytes and ~300 instructions).
    /// Again because newer entries (each second's `date`) push it out after a minute or so; not
    /// more often, because every indexed copy is one more entry on nghttp2's chain for that name,
    /// which lookups of other fields in the same hash bucket walk (indexed every 64 responses,
    /// the chain grew to the table's size and cost more than the name saved).
    static let changingFieldsReindexInterval = TimeAmount.seconds(10)

    private static let statusName: [UInt8] = Array(":status".utf8)

    /// Lays out `:status` and the fields that may go out over HTTP/2, then calls `submit` with them.
    /// `retain`: whether the bytes may be kept for nghttp2 to read later (false inside an nghttp2
    /// call, where a head answered from a callback could be encoded before the call returns).
    mutating func fill(
        status: Int, headers: HTTPHeaders, retain: Bool, now: NIODeadline, _ submit: (UnsafeMutablePointer<nghttp2_nv>, Int) -> Void
    ) {
        self.begin(status: status, fields: headers.count)
        for (name, value) in headers { self.add(name: name, value: value) }
        self.submit(retain: retain, now: now, submit)
    }

    /// `fill` for a forwarded head: the rewrite writes its fields straight into the scratch.
    mutating func fill(
        _ forwarded: ForwardedResponseHead, retain: Bool, now: NIODeadline, _ submit: (UnsafeMutablePointer<nghttp2_nv>, Int) -> Void
    ) {
        let additions = forwarded.additions
        // Every field the rewrite may add: the request id, `Vary`, HSTS, `Transfer-Encoding`.
        let fields = forwarded.upstream.fields.fieldCount + additions.headers.count + additions.extraHeaders.count + 4
        self.copyingCheckedLines = forwarded.upstream.fields.lines != nil
        defer { self.copyingCheckedLines = false }
        _ = HeaderRewriter.inOneOrTwoPasses(forwarded.upstream.fields) { named in
            self.begin(status: Int(forwarded.upstream.status.code), fields: fields)
            return HeaderRewriter.rewriteResponseFields(
                forwarded.upstream.fields, status: forwarded.upstream.status, requestMethod: forwarded.requestMethod,
                clientVersion: forwarded.clientVersion, requestID: forwarded.requestID, addHSTS: forwarded.addHSTS,
                additions: additions, named: named, into: &self
            )
        }
        self.submit(retain: retain, now: now, submit)
    }

    /// Starts a response: `:status` and its digits, room for `fields` more.
    private mutating func begin(status: Int, fields: Int) {
        self.reserveFields(fields + 1)
        self.reserveBytes(Self.statusName.count + 20, keeping: 0)
        Self.statusName.withUnsafeBufferPointer { name in
            self.bytes!.update(from: name.baseAddress!, count: name.count)
        }
        let digits = Self.writeDecimal(status, to: self.bytes! + Self.statusName.count)
        self.fields![0].namelen = Self.statusName.count
        self.fields![0].valuelen = digits
        self.used = Self.statusName.count + digits
        self.count = 1
    }

    /// One field from a head's bytes, dropped if it may not go out over HTTP/2 (`HTTP2ResponseField`).
    mutating func add(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        self.add(name: name, value: value, source: self.copyingCheckedLines ? .checkedLine : .unchecked)
    }

    /// A field the gateway made (or a decoded head's): always checked.
    mutating func add(name: String, value: String) {
        name.withUTF8Bytes { name in value.withUTF8Bytes { self.add(name: name, value: $0, source: .unchecked) } }
    }

    /// The name copied as it is (a lowercase token), unless connection-specific; the value checked.
    mutating func add(lowercaseName name: StaticString, value: String) {
        let name = UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        if HeaderRewriter.isHopByHop(name) { return }
        value.withUTF8Bytes { self.add(name: name, value: $0, source: .gatewayNamed) }
    }

    /// What has been checked of a field before it is copied.
    private enum FieldCheck {
        /// Both checked (an upstream head's lines after the rewrite): the name is lowercased.
        case checkedLine
        /// The name is a lowercase token the gateway chose; the value is checked.
        case gatewayNamed
        /// Neither: both are checked, and the field dropped if either fails.
        case unchecked
    }

    private mutating func add(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>, source: FieldCheck) {
        // A field is copied at most as long as it came; its value right after its name.
        self.reserveBytes(self.used + name.count + value.count, keeping: self.used)
        if self.count == self.fieldCapacity { self.reserveFields(self.count * 2, keeping: self.count) }
        let start = self.bytes! + self.used
        let nameLength: Int, valueLength: Int
        switch source {
        case .checkedLine:
            nameLength = HTTP2ResponseField.copyLowercased(name, to: start)
            valueLength = value.count
            if valueLength > 0 { (start + nameLength).update(from: value.baseAddress!, count: valueLength) }
        case .gatewayNamed:
            start.update(from: name.baseAddress!, count: name.count)
            guard let value = HTTP2ResponseField.copyValue(value, to: start + name.count) else { return }
            nameLength = name.count
            valueLength = value
        case .unchecked:
            guard let name = HTTP2ResponseField.copyName(name, to: start),
                let value = HTTP2ResponseField.copyValue(value, to: start + name)
            else { return }
            nameLength = name
            valueLength = value
        }
        self.fields![self.count].namelen = nameLength
        self.fields![self.count].valuelen = valueLength
        self.used += nameLength + valueLength
        self.count += 1
    }

    private mutating func submit(retain: Bool, now: NIODeadline, _ submit: (UnsafeMutablePointer<nghttp2_nv>, Int) -> Void) {
        var base = self.bytes!
        var noCopy = NGHTTP2_NV_FLAG_NONE.rawValue
        if retain && self.retainedUsed + self.used <= Self.retainedCapacity {
            if self.retained == nil { self.retained = .allocate(capacity: Self.retainedCapacity) }
            base = self.retained! + self.retainedUsed
            base.update(from: self.bytes!, count: self.used)
            self.retainedUsed += self.used
            noCopy = NGHTTP2_NV_FLAG_NO_COPY_NAME.rawValue | NGHTTP2_NV_FLAG_NO_COPY_VALUE.rawValue
        }
        let neverIndexChanging = now < self.changingFieldsIndexedAt + Self.changingFieldsReindexInterval
        if !neverIndexChanging { self.changingFieldsIndexedAt = now }
        // Pointers are set once the bytes no longer move.
        var offset = 0
        for index in 0..<self.count {
            let field = self.fields! + index
            field.pointee.name = base + offset
            field.pointee.value = base + offset + field.pointee.namelen
            let neverIndex = neverIndexChanging
                && HTTP2ResponseField.changesPerResponse(UnsafeBufferPointer(start: field.pointee.name, count: field.pointee.namelen))
            field.pointee.flags = UInt8((neverIndex ? NGHTTP2_NV_FLAG_NO_INDEX.rawValue : NGHTTP2_NV_FLAG_NONE.rawValue) | noCopy)
            offset += field.pointee.namelen + field.pointee.valuelen
        }
        submit(self.fields!, self.count)
    }

    /// The session has sent every frame it had: no submitted head points into `retained` any more.
    mutating func releaseRetained() { self.retainedUsed = 0 }

    private static func writeDecimal(_ value: Int, to destination: UnsafeMutablePointer<UInt8>) -> Int {
        var digits = 1
        var scale = 1
        while value / scale >= 10 {
            scale *= 10
            digits += 1
        }
        var rest = max(value, 0)
        for index in 0..<digits {
            destination[index] = UInt8(ascii: "0") + UInt8(rest / scale)
            rest %= scale
            scale /= 10
        }
        return digits
    }

    /// Room for `count` fields; the first `kept` are carried over when the array grows.
    private mutating func reserveFields(_ count: Int, keeping kept: Int = 0) {
        guard count > self.fieldCapacity else { return }
        let capacity = max(count, 16)
        let grown = UnsafeMutablePointer<nghttp2_nv>.allocate(capacity: capacity)
        grown.initialize(repeating: nghttp2_nv(), count: capacity)
        if let old = self.fields {
            grown.update(from: old, count: kept)
            old.deallocate()
        }
        self.fields = grown
        self.fieldCapacity = capacity
    }

    /// Room for `count` bytes; the first `kept` are carried over when the memory grows.
    private mutating func reserveBytes(_ count: Int, keeping kept: Int) {
        guard count > self.byteCapacity else { return }
        let capacity = max(count, self.byteCapacity * 2, 512)
        let grown = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        if let old = self.bytes {
            grown.update(from: old, count: kept)
            old.deallocate()
        }
        self.bytes = grown
        self.byteCapacity = capacity
    }

    func deallocate() {
        self.fields?.deallocate()
        self.bytes?.deallocate()
        self.retained?.deallocate()
    }
}

// MARK: - C thunks: unwrap the handler and forward, nothing else.

// The handler owns the session and the pool, so both outlive every callback: they are borrowed
// (`_withUnsafeGuaranteedRef`), not retained and released around each call, which nghttp2 makes
// several times per stream (measured: ~2% of an HTTP/2 request's CPU in those pairs).

private func withBlockPool<R>(_ userData: UnsafeMutableRawPointer?, _ body: (HTTP2BlockPool) -> R) -> R {
    Unmanaged<HTTP2BlockPool>.fromOpaque(userData!)._withUnsafeGuaranteedRef(body)
}

private let poolMalloc: nghttp2_malloc = { size, userData in
    withBlockPool(userData) { $0.allocate(size) }
}

private let poolFree: nghttp2_free = { pointer, userData in
    guard let pointer else { return }
    withBlockPool(userData) { $0.deallocate(pointer) }
}

private let poolCalloc: nghttp2_calloc = { count, size, userData in
    let (bytes, overflow) = count.multipliedReportingOverflow(by: size)
    guard !overflow else { return nil }
    let pointer = withBlockPool(userData) { $0.allocate(bytes) }
    pointer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    return pointer
}

private let poolRealloc: nghttp2_realloc = { pointer, size, userData in
    withBlockPool(userData) { $0.reallocate(pointer, size) }
}

private func withHandler<R>(_ userData: UnsafeMutableRawPointer?, _ body: (HTTP2ServerHandler) -> R) -> R {
    Unmanaged<HTTP2ServerHandler>.fromOpaque(userData!)._withUnsafeGuaranteedRef(body)
}

private let onBeginHeaders: nghttp2_on_begin_headers_callback = { _, frame, userData in
    guard let frame else { return 0 }
    if frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue)
        && frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST
    {
        withHandler(userData) { $0.beginStream(frame.pointee.hd.stream_id) }
    }
    return 0
}

private let onHeader: nghttp2_on_header_callback = { _, frame, name, nameLength, value, valueLength, _, userData in
    guard let frame, let name, let value else { return 0 }
    let accepted = withHandler(userData) {
        $0.header(
            frame.pointee.hd.stream_id,
            name: UnsafeBufferPointer(start: name, count: nameLength),
            value: UnsafeBufferPointer(start: value, count: valueLength),
            trailer: frame.pointee.headers.cat != NGHTTP2_HCAT_REQUEST
        )
    }
    // The stream is reset already (PROTOCOL_ERROR): nghttp2 skips the rest of the block and
    // does not report the frame.
    return accepted ? 0 : Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
}

private let onFrameRecv: nghttp2_on_frame_recv_callback = { _, frame, userData in
    guard let frame else { return 0 }
    let endStream = frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
    switch UInt32(frame.pointee.hd.type) {
    case NGHTTP2_HEADERS.rawValue:
        withHandler(userData) { $0.headersComplete(frame.pointee.hd.stream_id, endStream: endStream) }
    case NGHTTP2_DATA.rawValue where endStream:
        withHandler(userData) { $0.dataEnded(frame.pointee.hd.stream_id) }
    default:
        break
    }
    return 0
}

private let onDataChunk: nghttp2_on_data_chunk_recv_callback = { _, _, streamID, data, length, userData in
    guard let data else { return 0 }
    withHandler(userData) { $0.data(streamID, UnsafeBufferPointer(start: data, count: length)) }
    return 0
}

private let onStreamClose: nghttp2_on_stream_close_callback = { _, streamID, _, userData in
    withHandler(userData) { $0.streamClosed(streamID) }
    return 0
}

private let onBeginFrame: nghttp2_on_begin_frame_callback = { _, header, userData in
    guard let header else { return 0 }
    let ok = withHandler(userData) {
        $0.frameBegins(type: header.pointee.type, length: header.pointee.length, flags: header.pointee.flags)
    }
    return ok ? 0 : Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue)
}

private let readResponseData: nghttp2_data_source_read_callback = { _, streamID, buffer, length, flags, source, userData in
    guard let buffer, let flags, let streamPointer = source?.pointee.ptr else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
    let stream = Unmanaged<HTTP2Stream>.fromOpaque(streamPointer).takeUnretainedValue()
    // A stream object is reused only once its stream closed, and nghttp2 drops a closed stream's data.
    guard stream.id == streamID else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
    return withHandler(userData) { $0.readResponse(stream, into: buffer, length: length, flags: flags) }
}
