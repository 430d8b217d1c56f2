import NIOCore
import NIOHTTP1

/// One HTTP/2 stream: collects the request head, runs it through the same `RequestPipeline` as
/// HTTP/1.1, and is the `DownstreamResponder` of its `RequestExchange`. Response bytes wait in a
/// small per-stream buffer that nghttp2's data provider drains as flow control allows; above the
/// high watermark the exchange pauses upstream reads, so a slow reader costs bounded memory.
///
/// Where the stream is and how it answers (a response or a reset, credit now or later, end or
/// wait) is `StateMachine`'s, tested without a session; this class does the I/O and keeps the
/// request's data.
final class HTTP2Stream: DownstreamResponder {
    enum ReadResult {
        case bytes(Int, end: Bool)
        case deferred
    }

    private(set) var id: Int32
    /// Strong: an `unowned` reference cost a checked retain and a release on every use (~15 per
    /// request). The cycle it makes with the handler's stream lists is broken when the handler
    /// tears down (`teardown()` empties every list, and nothing is added to them after), and a
    /// stream an exchange still holds keeps the handler only until the exchange lets go.
    private let connection: HTTP2ServerHandler
    /// Everything about the request this stream carries. One value, so that a stream object the
    /// connection reuses for its next stream (`reuse(id:)`) starts from scratch whole: a field
    /// kept beside it would carry one request's data into the next.
    private var data: StreamData

    private struct StreamData: ~Copyable {
        // Request side
        var method: HTTPMethod?
        var path: String?
        /// The request's fields as `name: value` CRLF lines (`HeadFields`).
        var fieldLines: ByteBuffer
        var fieldCount = 0
        var cookies: [String] = []
        var headerBytes = 0
        var headersTooLarge = false
        /// RFC 9113 §8's checks, as the fields and DATA arrive.
        var rules = HTTP2RequestRules()
        /// Found malformed and reset: later fields and DATA are dropped.
        var refused = false
        var requestID = ""
        var hasBody = false
        /// When more request body must have arrived; nil once the request is complete.
        var bodyDueBy: NIODeadline?
        /// `timeouts.idle` of the snapshot the request head was dispatched with (read once, not per
        /// DATA frame); set before any body is expected.
        var idleTimeout = TimeAmount.zero
        var bodyBytes = 0
        var exchange: RequestExchange?
        var isHEAD = false
        var responseAdditions = ResponseAdditions.none
        /// Made when the head is complete; taken (left nil) when it is logged.
        var record: RequestRecord?
        /// `:protocol` of an extended CONNECT (RFC 8441).
        var connectProtocol: String?
        /// Set once an extended CONNECT became a WebSocket tunnel: DATA frames carry its bytes.
        var tunnel: ByteTunnel?

        var responseQueue = ResponseBytes()
        var state = StateMachine()

        init() {
            self.fieldLines = ByteBuffer()
        }

        private init(fieldLines: ByteBuffer) {
            self.fieldLines = fieldLines
        }

        /// A new stream's data, with only the field lines' storage kept: moved out of the old
        /// value and into the new one (no default buffer made and replaced, no extra reference).
        mutating func startOver() {
            var lines = (consume self).fieldLines
            lines.clear()
            self = StreamData(fieldLines: lines)
        }
    }

    var headComplete: Bool { self.data.state.headComplete }
    /// The body stalled and was answered 408: the stream is reset once that response is out.
    var resetsWhenAnswered: Bool { self.data.state.resetsWhenAnswered }
    private var isClosed: Bool { self.data.state.closed }

    init(id: Int32, connection: HTTP2ServerHandler) {
        self.id = id
        self.connection = connection
        self.data = StreamData()
    }

    /// Whether the connection may keep this object for a later stream once it is closed: not
    /// after an extended CONNECT, whose tunnel held it by a weak reference (that gave it a side
    /// table, which would slow every retain and release of it for good).
    var isReusable: Bool { self.data.connectProtocol == nil && self.isClosed }

    /// Takes this object, closed and held by nothing else, for stream `id`: saves an allocation
    /// per stream.
    func reuse(id: Int32) {
        self.id = id
        // The field lines' storage is kept: cleared in place once the last request's head (held
        // by its exchange) has let go of it, so a reused stream allocates nothing for its fields.
        self.data.startOver()
    }

    // MARK: - Request

    /// One field of the request head, or of its trailers (`trailer`), checked against RFC 9113
    /// §8 (`HTTP2RequestRules`). Returns false when the request is malformed: the connection
    /// resets the stream.
    /// - Parameters:
    ///   - maxHeaderListSize: the connection's limit, passed in by the connection, which has it
    ///     at hand.
    ///   - recentPath: the connection's last `:path` text, reused while the bytes repeat.
    func addHeader(
        name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>, trailer: Bool, connectProtocol: Bool, maxHeaderListSize: Int,
        recentPath: inout RecentText
    ) -> Bool {
        guard let kind = self.data.rules.field(name: name, value: value, trailer: trailer, connectProtocol: connectProtocol) else {
            return false
        }
        // RFC 7541 §4.1 accounting (name + value + 32), checked while decoding so a block of many
        // tiny headers is answered 431 instead of buffered.
        self.data.headerBytes += name.count + value.count + 32
        // Trailers are dropped (upstream requests are re-framed), but a trailer section past the
        // limit is malformed all the same: the request is under way, so the stream is reset.
        if trailer { return self.data.headerBytes <= maxHeaderListSize }
        if self.data.headerBytes > maxHeaderListSize {
            self.data.headersTooLarge = true
        }
        if self.data.headersTooLarge { return true }
        // Only what is kept becomes a `String`. The rules passed only lowercase tokens and values
        // without CR, LF or NUL: the lines, read back by splitting at CRLF and the first colon,
        // cannot be broken.
        switch kind {
        case .path:
            self.data.path = recentPath.text(for: value)
        case .method:
            self.data.method = Self.method(value)
        case .scheme:
            break
        case .protocol:
            self.data.connectProtocol = String(decoding: value, as: UTF8.self)
        case .authority:
            // Pseudo-fields come first (the rules refuse one after a regular field): no `host`
            // was written before it.
            self.appendFieldLine(name: "host", value: value)
        case .cookie:
            self.data.cookies.append(String(decoding: value, as: UTF8.self))  // crumbs are joined (RFC 9113 §8.2.3)
        case .host:
            // The only one (the rules refuse a second); `:authority`, when sent, is the host.
            if !self.data.rules.sawAuthority { self.appendFieldLine(name: "host", value: value) }
        case .other:
            self.appendFieldLine(name: name, value: value)
        }
        return true
    }

    /// The request head is in: false when it is malformed (RFC 9113 §8.1.1), and the stream is
    /// reset instead of dispatched.
    func headEnded(endStream: Bool) -> Bool {
        self.data.rules.headEnded(endStream: endStream)
    }

    /// Trailers are in: false when they do not end the stream or the body fell short of its
    /// `content-length`.
    func trailersEnded(endStream: Bool) -> Bool {
        self.data.rules.trailersEnded(endStream: endStream)
    }

    /// `count` body bytes arrived: false when they overrun the request's `content-length`.
    func bodyAllowed(count: Int) -> Bool {
        !self.data.refused && self.data.rules.bodyReceived(count: count)
    }

    /// The client ended the stream with DATA: false when the body fell short of its `content-length`.
    func endAllowed() -> Bool {
        !self.data.refused && self.data.rules.streamEnded()
    }

    /// The stream was found malformed and is being reset: nothing more of it is read, and an
    /// upstream request already under way is dropped now (its connection closed, not reused),
    /// before the reset is even sent.
    func refuse() {
        self.data.refused = true
        self.data.bodyDueBy = nil
        if let exchange = self.data.exchange.take() {
            self.data.record?.note(exchange)
            exchange.cancel()
        }
        // Logged and counted as the 400 it is (the client gets a reset, not a response, as from
        // nghttp2): one refused before its head was dispatched has no record yet.
        if self.data.record == nil {
            self.data.record = RequestRecord(
                method: self.data.method ?? .RAW(value: "-"), target: self.data.path ?? "-", version: .http2,
                requestID: RequestIdentity.requestID(clientSupplied: nil)
            )
        }
        if self.data.record?.status == 0 {
            self.data.record?.status = 400
            self.data.record?.source = .badRequest
        }
    }

    var isRefused: Bool { self.data.refused }

    /// The request's RFC 9218 `priority`, if it sent one nghttp2's scheduler can use.
    var requestedPriority: (urgency: UInt8, incremental: Bool)? { self.data.rules.priority }

    /// `:method`'s value: a common method told apart by its bytes (no `String` made and compared
    /// with each of `HTTPMethod(rawValue:)`'s names); any other as that initializer reads it.
    static func method(_ bytes: UnsafeBufferPointer<UInt8>) -> HTTPMethod {
        HTTPMethod(commonMethodBytes: UnsafeRawBufferPointer(bytes)) ?? HTTPMethod(rawValue: String(decoding: bytes, as: UTF8.self))
    }

    private func appendFieldLine(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        // Room for a typical request's fields, reserved once instead of grown field by field.
        if self.data.fieldLines.capacity == 0 { self.data.fieldLines.reserveCapacity(512) }
        self.data.fieldLines.writeWithUnsafeMutableBytes(minimumWritableBytes: name.count + value.count + 4) { raw in
            var out = raw.baseAddress!
            out.copyMemory(from: name.baseAddress!, byteCount: name.count)
            out += name.count
            out.storeBytes(of: UInt16(bigEndian: 0x3A20), as: UInt16.self)  // ": "
            out += 2
            if value.count > 0 { out.copyMemory(from: value.baseAddress!, byteCount: value.count) }
            out += value.count
            out.storeBytes(of: UInt16(bigEndian: 0x0D0A), as: UInt16.self)  // CRLF
            return name.count + value.count + 4
        }
        self.data.fieldCount += 1
    }

    private func appendFieldLine(name: StaticString, value: String) {
        value.withUTF8Bytes { self.appendFieldLine(name: name, value: $0) }
    }

    private func appendFieldLine(name: StaticString, value: UnsafeBufferPointer<UInt8>) {
        self.appendFieldLine(name: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount), value: value)
    }

    /// The fields gathered so far.
    private var fields: HeadFields {
        HeadFields(lines: FieldLines(validated: self.data.fieldLines, count: self.data.fieldCount))
    }

    func headersComplete(endStream: Bool) {
        let connection = self.connection
        let runtime = connection.runtime()
        self.data.idleTimeout = runtime.traffic.idleTimeout
        let method = self.data.method, path = self.data.path
        if self.data.state.headersComplete(endStream: endStream) { self.expectBody() }
        let allocator = connection.allocator
        if self.data.headersTooLarge || method == nil || path == nil {
            self.data.requestID = RequestIdentity.requestID(clientSupplied: self.fields.first(name: "x-request-id"))
            self.data.record = RequestRecord(
                method: method ?? .RAW(value: "-"), target: path ?? "-", version: .http2,
                requestID: self.data.requestID
            )
        }
        if self.data.headersTooLarge {
            self.respondLocally(GatewayError.headersTooLarge.response(requestID: self.data.requestID, allocator: allocator))
            return
        }
        self.data.headerBytes = 0  // the trailer section, if one comes, is a field section of its own
        guard let method, let path else {  // a CONNECT that is not extended
            self.respondLocally(GatewayError.badRequest("malformed HTTP/2 request").response(requestID: self.data.requestID, allocator: allocator))
            return
        }
        // `addHeader` wrote one `host` line; the lines end with the one `Cookie` an HTTP/1.1
        // upstream reads.
        if !self.data.cookies.isEmpty { self.appendFieldLine(name: "cookie", value: self.data.cookies.joined(separator: "; ")) }
        var headers = self.fields
        var httpMethod = method
        self.data.isHEAD = httpMethod.isHEAD
        // RFC 8441: a WebSocket over this stream is relayed as an HTTP/1.1 handshake, with no body.
        let extendedConnect = httpMethod.isCONNECT && self.data.connectProtocol == "websocket"
        if extendedConnect { WebSocketHandshake.addHTTP1Fields(to: &headers, method: &httpMethod) }
        let head = RequestHead(version: .http2, method: httpMethod, uri: path, headers: headers)
        // The record is made where it stays: one made beside and moved in was copied whole
        // (300-odd bytes) three times on its way.
        var dispatch = RequestDispatch.start(
            head, at: connection.clock(), record: &self.data.record, recentHost: &connection.recentHost,
            streamEnded: endStream || extendedConnect, peer: connection.peer,
            services: connection.services, runtime: runtime, downstream: self, allocator: allocator
        )
        // Swapped in, not copied: an assignment from the dispatch copied the additions' arrays
        // (an outlined copy each) and released them again with the dispatch.
        swap(&self.data.requestID, &dispatch.requestID)
        swap(&self.data.responseAdditions, &dispatch.responseAdditions)
        self.data.hasBody = dispatch.hasBody
        // Logged as the client sent it, not as the HTTP/1.1 handshake it was relayed as.
        if extendedConnect { self.data.record?.method = .CONNECT }
        switch dispatch.outcome {
        case .respond(let response):
            self.respondLocally(response)
        case .proxy(let exchange) where extendedConnect && exchange.webSocket == nil:
            // A 2xx would tell the client its tunnel is open: a route without `websocket: true` has none.
            exchange.cancel()
            self.respondLocally(GatewayError.badRequest("this route does not relay WebSockets")
                .response(requestID: self.data.requestID, allocator: allocator))
        case .proxy(let exchange):
            self.data.exchange = exchange
            connection.deferStart(self)
        }
    }

    func startProxy() {
        guard !self.isClosed else { return }
        self.data.exchange?.start()
    }

    func bodyReceived(_ body: ByteBuffer) {
        if let tunnel = self.data.tunnel {
            self.tunnelDataReceived(body, tunnel: tunnel)
            return
        }
        let count = body.readableBytes
        if !self.data.state.requestEnded { self.expectBody() }
        self.data.bodyBytes += count
        self.data.record?.bytesIn += count
        guard let exchange = self.data.exchange else {
            // Answered locally: the body is dropped, but its window is given back.
            self.connection.consume(streamID: self.id, count: self.data.state.bodyReceived(count: count, forwarded: false))
            return
        }
        if self.data.bodyBytes > self.connection.runtime().traffic.maxBodyBytes {
            exchange.cancel()
            self.data.exchange = nil
            switch self.data.state.refusal {
            case .reset:
                self.data.record?.source = .payloadTooLarge
                self.connection.resetStream(self.id, internalError: false)
            case .respond:
                let allocator = self.connection.allocator
                self.respondLocally(GatewayError.payloadTooLarge.response(requestID: self.data.requestID, trace: self.data.record?.trace, allocator: allocator))
            }
            return
        }
        exchange.requestBodyReceived(body)
        self.connection.consume(streamID: self.id, count: self.data.state.bodyReceived(count: count, forwarded: true))
    }

    func requestEnded() {
        guard self.data.state.requestEndReceived() else { return }
        // END_STREAM from the client ends its half of the tunnel: like a FIN, the whole tunnel.
        self.data.tunnel?.end(reason: "client_closed")
        self.data.bodyDueBy = nil
        self.data.exchange?.requestEndReceived()
    }

    // MARK: - Body stall

    private func expectBody() {
        let deadline = self.connection.clock() + self.data.idleTimeout
        self.data.bodyDueBy = deadline
        self.connection.bodyDeadlineSet(deadline)
    }

    /// When the body is next due, as the connection's check sees it at `now`. A client whose
    /// flow-control window the gateway keeps closed (the upstream is not taking the body) is
    /// waiting on us, not stalling: its clock starts over.
    func bodyDeadline(now: NIODeadline) -> NIODeadline? {
        guard let due = self.data.bodyDueBy, !self.isClosed else { return nil }
        if due <= now && !self.connection.clientMaySend(streamID: self.id) {
            self.expectBody()
            return self.data.bodyDueBy
        }
        return due
    }

    /// The client sent no request body for `timeouts.idle` while it could have (slowloris on the
    /// body): the upstream connection goes back, and the client gets a 408, or a reset once a
    /// response has started. A stream answered in full before its body ended (a 404, a 413, an
    /// upstream that answered early) is kept only while that body keeps arriving.
    func bodyStalled() {
        self.data.bodyDueBy = nil
        let answer = self.data.state.bodyStalled(responseBytesQueued: !self.data.responseQueue.isEmpty)
        guard answer != .none else { return }
        if let exchange = self.data.exchange.take() {
            self.data.record?.note(exchange)
            exchange.cancel()
        }
        switch answer {
        case .none:
            break
        case .resetWithoutError:
            self.connection.resetWithoutError(self.id)
        case .reset:
            self.data.record?.source = .requestTimeout
            self.connection.resetStream(self.id, internalError: false)
        case .respondRequestTimeout:
            let allocator = self.connection.allocator
            self.respondLocally(GatewayError.bodyTimeout.response(requestID: self.data.requestID, trace: self.data.record?.trace, allocator: allocator))
        }
    }

    /// The stream is gone (completed, reset by the client, or the connection closed).
    func closed() {
        _ = self.data.state.close()
        self.data.bodyDueBy = nil
        self.data.tunnel?.end(reason: "client_closed")
        if let exchange = self.data.exchange.take() {
            self.data.record?.note(exchange)
            exchange.cancel()
        }
        // Moved out once, settled and logged, then dropped: `self.data.record!` read through the
        // class was a whole copy of the record (300-odd bytes, a retain per reference) per use.
        if var record = self.data.record.take() {
            let responseComplete = self.data.state.responseDelivered(responseBytesQueued: !self.data.responseQueue.isEmpty)
            record.settle(responseComplete: responseComplete, exchange: nil)
            self.connection.finished(record)
        }
        self.data.responseQueue.removeAll()
    }

    // MARK: - Local responses

    private func respondLocally(_ response: LocalResponse) {
        var headers = response.headers
        self.data.responseAdditions.stampLocalResponse(&headers, requestID: self.data.requestID, tls: self.connection.services.listener.isTLS)
        let hasBody = !self.data.isHEAD && response.body.readableBytes > 0
        if hasBody { self.data.responseQueue.append(response.body) }
        self.data.state.responseStarts(bodiless: true)
        self.data.record?.status = Int(response.status.code)
        self.data.record?.source = response.source
        if hasBody { self.data.record?.bytesOut += response.body.readableBytes }
        self.connection.submitResponse(for: self, status: Int(response.status.code), headers: headers, hasBody: hasBody)
        self.connection.flushSoon()
    }

    // MARK: - Data provider

    func readResponse(into buffer: UnsafeMutableRawBufferPointer) -> ReadResult {
        let written = self.data.responseQueue.read(into: buffer)
        if self.data.state.wasOverHighWater && self.data.responseQueue.byteCount <= self.connection.settings.streamBufferLowWater {
            self.connection.noteDrained(self)
        }
        switch self.data.state.responseRead(written: written, queueEmpty: self.data.responseQueue.isEmpty) {
        case .bytes(let count, let end): return .bytes(count, end: end)
        case .deferred: return .deferred
        }
    }

    func responseBufferDrained() {
        guard self.data.state.drained() else { return }
        self.data.exchange?.downstreamWritabilityChanged(isWritable: true)
        self.data.tunnel?.writabilityChanged(of: .client, isWritable: true)
    }

    func connectionWritabilityChanged() {
        if self.isWritable {
            self.data.exchange?.downstreamWritabilityChanged(isWritable: true)
            self.data.tunnel?.writabilityChanged(of: .client, isWritable: true)
        }
    }

    private func dataAvailable() {
        if self.data.state.dataAvailable() { self.connection.resumeData(streamID: self.id) }
    }

    // MARK: - DownstreamResponder

    var isWritable: Bool {
        let connection = self.connection
        let writable = self.data.responseQueue.byteCount < connection.settings.streamBufferHighWater && connection.channelIsWritable
        if !writable { self.data.state.wentOverHighWater() }
        return writable
    }

    func sendContinue(for exchange: RequestExchange) {}

    func sendResponseHead(for exchange: RequestExchange, _ head: HTTPResponseHead, framing: HeaderRewriter.ResponseFraming) {
        guard let hasBody = self.responseStarts(for: exchange, status: Int(head.status.code)) else { return }
        self.connection.submitResponse(for: self, status: Int(head.status.code), headers: head.headers, hasBody: hasBody)
    }

    func sendForwardedResponseHead(for exchange: RequestExchange, _ head: ForwardedResponseHead) {
        guard let hasBody = self.responseStarts(for: exchange, status: Int(head.upstream.status.code)) else { return }
        self.connection.submitResponse(for: self, forwarded: head, hasBody: hasBody)
    }

    /// The bookkeeping of a proxied response's start; whether a body follows, or nil when the
    /// response is not to be sent.
    private func responseStarts(for exchange: RequestExchange, status code: Int) -> Bool? {
        guard !self.isClosed else { return nil }
        if exchange.webSocket != nil, code / 100 == 2 {
            // On an extended CONNECT a 2xx means "tunnel open"; only a checked 101 may say that.
            self.data.record?.note(exchange)
            self.data.exchange = nil
            exchange.cancel()
            let allocator = self.connection.allocator
            self.respondLocally(GatewayError.badUpstreamResponse.response(requestID: self.data.requestID, allocator: allocator))
            return nil
        }
        self.data.record?.status = code
        let bodiless = self.data.isHEAD || code == 204 || code == 304
        self.data.state.responseStarts(bodiless: bodiless)
        return !bodiless
    }

    func sendResponseBody(for exchange: RequestExchange, _ body: ByteBuffer) {
        guard !self.isClosed, !self.data.isHEAD else { return }
        self.data.responseQueue.append(body)
        self.data.record?.bytesOut += body.readableBytes
        self.dataAvailable()
    }

    func flush(for exchange: RequestExchange) { self.connection.flushSoon() }

    func sendResponseEnd(for exchange: RequestExchange) {
        guard !self.isClosed else { return }
        self.data.state.responseEnded()
        self.dataAvailable()
        self.connection.flushSoon()
    }

    func sendErrorResponse(for exchange: RequestExchange, _ error: GatewayError) {
        guard !self.isClosed else { return }
        if let exchange = self.data.exchange.take() { self.data.record?.note(exchange) }
        switch self.data.state.refusal {
        case .reset:
            self.connection.resetStream(self.id, internalError: true)
        case .respond:
            let allocator = self.connection.allocator
            self.respondLocally(error.response(requestID: self.data.requestID, allocator: allocator))
        }
    }

    func pauseRequestBody(for exchange: RequestExchange) { self.data.state.pauseBody() }

    func resumeRequestBody(for exchange: RequestExchange) {
        let credit = self.data.state.resumeBody()
        if !self.data.state.requestEnded && !self.isClosed { self.expectBody() }
        self.connection.consume(streamID: self.id, count: credit)
    }

    func abortResponse(for exchange: RequestExchange) {
        if let exchange = self.data.exchange { self.data.record?.note(exchange) }
        self.data.exchange = nil
        self.connection.resetStream(self.id, internalError: true)
    }

    func exchangeFinished(for exchange: RequestExchange) {
        if let exchange = self.data.exchange.take() { self.data.record?.note(exchange) }
    }
}

// MARK: - RFC 8441 WebSocket tunnel

extension HTTP2Stream: TunnelSide {
    func upgradeToTunnel(for exchange: RequestExchange, _ head: HTTPResponseHead, upstream connection: UpstreamConnection) {
        guard !self.isClosed, self.data.exchange === exchange, let handshake = exchange.webSocket,
            let loop = self.connection.context?.eventLoop
        else {
            connection.close()
            if !self.isClosed { self.connection.resetStream(self.id, internalError: true) }
            return
        }
        self.data.record?.note(exchange)
        self.data.exchange = nil
        let tunnel = ByteTunnel(eventLoop: loop, idleTimeout: handshake.idleTimeout, client: self)
        do {
            try TunnelSwitch.installUpstream(tunnel, connection: connection)
        } catch {
            connection.close()
            self.connection.resetStream(self.id, internalError: true)
            return
        }
        // The stream stays open both ways: its DATA frames are the tunnel from here.
        self.data.tunnel = tunnel
        self.data.bodyDueBy = nil
        self.data.state.responseStarts(bodiless: false)
        self.data.record?.status = 200
        var fields = WebSocketHandshake.extendedConnectResponseFields(head)
        ResponseAdditions.none.stampLocalResponse(&fields, requestID: self.data.requestID, tls: self.connection.services.listener.isTLS)
        self.connection.submitResponse(for: self, status: 200, headers: fields, hasBody: true)
        let metrics = self.connection.services.observability.metrics
        metrics.tunnelsActive.increment([handshake.routeName])
        tunnel.onEnd = { [weak self] totals in
            metrics.tunnelsActive.increment([handshake.routeName], by: -1)
            metrics.tunnelBytes.increment([handshake.routeName, "in"], by: Double(totals.bytesIn))
            metrics.tunnelBytes.increment([handshake.routeName, "out"], by: Double(totals.bytesOut))
            self?.data.record?.bytesIn += totals.bytesIn
            self?.data.tunnel = nil
        }
        tunnel.start()
        self.connection.flushSoon()
    }

    private func tunnelDataReceived(_ body: ByteBuffer, tunnel: ByteTunnel) {
        let count = body.readableBytes
        tunnel.relay(body, from: .client)
        tunnel.readComplete(from: .client)
        // The window reopens only as fast as the upstream takes the bytes.
        self.connection.consume(streamID: self.id, count: self.data.state.bodyReceived(count: count, forwarded: true))
    }

    func send(_ buffer: ByteBuffer) {
        guard !self.isClosed else { return }
        self.data.responseQueue.append(buffer)
        self.data.record?.bytesOut += buffer.readableBytes
        self.dataAvailable()
    }

    func flush() { self.connection.flushSoon() }

    func pauseReads() { self.data.state.pauseBody() }

    func resumeReads() {
        guard self.data.state.bodyPaused else { return }
        let credit = self.data.state.resumeBody()
        if !self.isClosed { self.connection.consume(streamID: self.id, count: credit) }
    }

    /// END_STREAM once the relayed bytes are out (the upstream closed, idle, drain).
    func close() {
        guard !self.isClosed else { return }
        self.data.state.responseEnded()
        self.dataAvailable()
        self.connection.flushSoon()
    }
}

/// Response bytes waiting for nghttp2's data provider. A response is usually one buffer, held
/// inline; a queue is made only for a stream whose upstream sends faster than its client reads.
private struct ResponseBytes {
    private var first: ByteBuffer?
    private var more: CircularBuffer<ByteBuffer>?
    /// Bytes waiting, for the stream's watermarks.
    private(set) var byteCount = 0

    var isEmpty: Bool { self.first == nil }

    mutating func append(_ buffer: ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        self.byteCount += buffer.readableBytes
        if self.first == nil {
            self.first = buffer
        } else {
            if self.more == nil { self.more = CircularBuffer(initialCapacity: 4) }
            self.more!.append(buffer)
        }
    }

    /// Copies as many bytes as fit into `destination` and returns how many.
    mutating func read(into destination: UnsafeMutableRawBufferPointer) -> Int {
        var written = 0
        while written < destination.count, var chunk = self.first {
            self.first = nil  // put back below while bytes remain
            let count = min(chunk.readableBytes, destination.count - written)
            chunk.withUnsafeReadableBytes { bytes in
                UnsafeMutableRawBufferPointer(rebasing: destination[written..<written + count])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0..<count]))
            }
            chunk.moveReaderIndex(forwardBy: count)
            written += count
            if chunk.readableBytes > 0 {
                self.first = chunk
            } else if let next = self.more?.popFirst() {
                self.first = next
            }
        }
        self.byteCount -= written
        return written
    }

    mutating func removeAll() {
        self.first = nil
        self.more = nil
        self.byteCount = 0
    }
}
