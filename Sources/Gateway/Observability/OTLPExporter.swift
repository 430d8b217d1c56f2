import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import TLSClient

/// Where `tracing.otlp_endpoint` points, split once: spans are POSTed to `{base path}/v1/traces`.
struct OTLPEndpoint: OneShotTarget, Equatable {
    var secure: Bool
    var host: String
    var port: Int
    /// Origin-form request target of the traces signal.
    var target: String

    init?(url: String) {
        guard Self.problem(url) == nil, let parsed = URL(string: url), let host = parsed.host else { return nil }
        self.secure = parsed.scheme?.lowercased() == "https"
        self.host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        self.port = parsed.port ?? (self.secure ? 443 : 80)
        var base = parsed.path
        while base.hasSuffix("/") { base.removeLast() }
        self.target = base + "/v1/traces"
    }

    /// Why `url` cannot be an OTLP/HTTP base URL, or nil when it can.
    static func problem(_ url: String) -> String? {
        guard let parsed = URL(string: url), let scheme = parsed.scheme?.lowercased() else {
            return "expected a URL like http://127.0.0.1:4318, got '\(url)'"
        }
        guard scheme == "http" || scheme == "https" else { return "the scheme must be http or https, got '\(scheme)'" }
        guard let host = parsed.host, !host.isEmpty else { return "the URL has no host" }
        guard parsed.user == nil, parsed.password == nil else {
            return "credentials in the URL are not supported (use tracing.headers)"
        }
        guard parsed.query == nil, parsed.fragment == nil else { return "the URL must not have a query or fragment" }
        return nil
    }
}

/// The OTLP/JSON encoding of an `ExportTraceServiceRequest` (the protobuf JSON mapping: camelCase
/// field names, ids as lowercase hex, 64-bit integers as decimal strings, enums as numbers).
enum OTLPJSON {
    /// `Span.SpanKind.SPAN_KIND_SERVER`.
    static let kindServer = 2
    /// `Status.StatusCode.STATUS_CODE_ERROR`: a server span errs on 5xx only (HTTP semantic conventions).
    static let statusError = 2

    static func encode(_ spans: some Collection<FinishedSpan>, serviceName: String) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(256 + spans.count * 640)
        out.writeStaticString(#"{"resourceSpans":[{"resource":{"attributes":["#)
        self.attribute("service.name", string: serviceName, into: &out, first: true)
        out.writeStaticString(#"]},"scopeSpans":[{"scope":{"name":"barberpro-gateway"},"spans":["#)
        var first = true
        for span in spans {
            if !first { out.writeStaticString(",") }
            first = false
            self.write(span, into: &out)
        }
        out.writeStaticString("]}]}]}")
        return out
    }

    private static func write(_ span: FinishedSpan, into out: inout ByteBuffer) {
        let trace = span.trace
        out.writeStaticString(#"{"traceId":""#)
        out.writeString(trace.traceIDString)
        out.writeStaticString(#"","spanId":""#)
        out.writeString(trace.spanIDString)
        if trace.parentSpanID != 0 {
            out.writeStaticString(#"","parentSpanId":""#)
            out.writeString(trace.parentSpanIDString)
        }
        out.writeStaticString(#"","name":""#)
        // `{method} {http.route}` (HTTP semantic conventions); the method alone when no route matched.
        JSON.writeEscaped(span.name == "-" ? span.method : "\(span.method) \(span.name)", into: &out)
        out.writeString("\",\"kind\":\(self.kindServer),\"startTimeUnixNano\":\"\(span.startNanoseconds)\"")
        out.writeString(",\"endTimeUnixNano\":\"\(span.endNanoseconds)\",\"attributes\":[")
        self.attribute("http.request.method", string: span.method, into: &out, first: true)
        self.attribute("url.path", string: span.path, into: &out)
        self.attribute("http.response.status_code", int: span.status, into: &out)
        if span.name != "-" { self.attribute("http.route", string: span.name, into: &out) }
        if let host = span.host {
            let (address, port) = Self.splitHost(host)
            self.attribute("server.address", string: address, into: &out)
            if let port { self.attribute("server.port", int: port, into: &out) }
        }
        if !span.clientIP.isEmpty { self.attribute("client.address", string: span.clientIP, into: &out) }
        self.attribute("gateway.source", string: span.source.name, into: &out)
        if let endpoint = span.upstreamEndpoint { self.attribute("gateway.upstream.endpoint", string: endpoint, into: &out) }
        out.writeStaticString("]")
        if span.status >= 500 {
            out.writeString(",\"status\":{\"code\":\(self.statusError)}")
        }
        out.writeStaticString("}")
    }

    private static func attribute(_ key: StaticString, string value: String, into out: inout ByteBuffer, first: Bool = false) {
        if !first { out.writeStaticString(",") }
        out.writeStaticString(#"{"key":""#)
        out.writeStaticString(key)
        out.writeStaticString(#"","value":{"stringValue":""#)
        JSON.writeEscaped(value, into: &out)
        out.writeStaticString(#""}}"#)
    }

    private static func attribute(_ key: StaticString, int value: Int, into out: inout ByteBuffer) {
        out.writeStaticString(#",{"key":""#)
        out.writeStaticString(key)
        out.writeString("\",\"value\":{\"intValue\":\"\(value)\"}}")
    }

    /// `Host` / `:authority` as `server.address` and `server.port`.
    static func splitHost(_ host: String) -> (String, Int?) {
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return (host, nil) }
            let address = String(host[host.index(after: host.startIndex)..<close])
            let rest = host[host.index(after: close)...]
            return (address, rest.hasPrefix(":") ? Int(rest.dropFirst()) : nil)
        }
        guard let colon = host.lastIndex(of: ":"), host.firstIndex(of: ":") == colon,
              let port = Int(host[host.index(after: colon)...]) else { return (host, nil) }
        return (String(host[..<colon]), port)
    }
}

/// `tracing.otlp_endpoint`'s exporter: the event loops only append to a bounded queue; a thread of
/// its own encodes and POSTs batches (every `flush_interval`, or as soon as a batch fills). Spans
/// that find the queue full, or whose batch the collector did not take, are dropped and counted:
/// tracing never slows a request down or holds memory without bound.
final class OTLPExporter: SpanExporter {
    /// Sends one encoded batch; the future fails when the collector did not take it.
    typealias Transport = @Sendable (ByteBuffer, EventLoop) -> EventLoopFuture<Void>

    static let queueCapacity = 2048
    static let batchSize = 512
    /// On shutdown no batch starts after this; one in flight may take the sender's timeout more.
    static let shutdownDeadline: Duration = .seconds(2)

    private struct State {
        var queue: [FinishedSpan] = []
        var sending = false
        var stopped = false
        /// Whether the last export failed: the operator hears of a failing collector once, not per batch.
        var failing = false
    }

    private let state = Mutex(State())
    private let group: MultiThreadedEventLoopGroup
    private let loop: EventLoop
    private let transport: Transport
    private let serviceName: String
    private let queueCapacity: Int
    private let batchSize: Int
    private let sampleThreshold: UInt64
    private let sampleCounter = Atomic<UInt64>(0)
    private let timer: RepeatedTask
    /// `(reason, count)`: `queue_full`, `export_failed`, `shutdown`.
    private let onDrop: @Sendable (String, Int) -> Void
    private let onExport: @Sendable (Int) -> Void

    init(
        serviceName: String, sampleRatio: Double, flushInterval: TimeAmount,
        queueCapacity: Int = OTLPExporter.queueCapacity, batchSize: Int = OTLPExporter.batchSize,
        transport: @escaping Transport,
        onDrop: @escaping @Sendable (String, Int) -> Void = { _, _ in },
        onExport: @escaping @Sendable (Int) -> Void = { _ in }
    ) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.group = group
        self.loop = group.next()
        self.transport = transport
        self.serviceName = serviceName
        self.queueCapacity = queueCapacity
        self.batchSize = batchSize
        // ratio × 2^64, saturating: 1 samples every draw, 0 none.
        self.sampleThreshold = sampleRatio >= 1 ? .max : UInt64(max(0, sampleRatio) * 18_446_744_073_709_551_615.0)
        self.onDrop = onDrop
        self.onExport = onExport
        // The task is scheduled before `self` is whole, so it reaches the exporter through a box.
        let flushes = Mutex<OTLPExporter?>(nil)
        self.timer = self.loop.scheduleRepeatedTask(initialDelay: flushInterval, delay: flushInterval) { _ in
            flushes.withLock { $0 }?.flush()
        }
        flushes.withLock { $0 = self }
    }

    /// The exporter for `tracing`, or nil when no endpoint is set (nothing is sampled or built).
    static func make(_ tracing: TracingConfig, metrics: GatewayMetrics) -> OTLPExporter? {
        guard let url = tracing.otlpEndpoint, let endpoint = OTLPEndpoint(url: url) else { return nil }
        let headers = tracing.headers.map { ($0.name, $0.value.value) }
        let sender = OTLPHTTPSender(endpoint: endpoint, headers: headers)
        // Present from the start, so an alert on their rate has a series to read.
        for reason in ["queue_full", "export_failed", "shutdown"] { metrics.spansDropped.increment([reason], by: 0) }
        return OTLPExporter(
            serviceName: tracing.serviceName, sampleRatio: tracing.sampleRatio,
            flushInterval: TimeAmount(tracing.flushInterval),
            transport: { body, loop in sender.send(body, on: loop) },
            onDrop: { metrics.spansDropped.increment([$0], by: Double($1)) },
            onExport: { metrics.spansExported.increment([], by: Double($0)) }
        )
    }

    /// A splitmix64 draw from a counter: no syscall and no lock per request.
    func samplesNewTrace() -> Bool {
        if self.sampleThreshold == 0 { return false }
        if self.sampleThreshold == .max { return true }
        var z = self.sampleCounter.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return (z ^ (z >> 31)) < self.sampleThreshold
    }

    func export(_ span: FinishedSpan) {
        let (refused, batchFull) = self.state.withLock { state -> (String?, Bool) in
            if state.stopped { return ("shutdown", false) }
            guard state.queue.count < self.queueCapacity else { return ("queue_full", false) }
            state.queue.append(span)
            return (nil, state.queue.count == self.batchSize)
        }
        if let refused {
            self.onDrop(refused, 1)
        } else if batchFull {
            self.loop.execute { self.flush(fullBatchOnly: true) }
        }
    }

    /// Sends the next batch unless one is in flight; a full queue keeps the batches coming.
    /// `fullBatchOnly` is for the triggers a filling queue starts: the batch they were queued for
    /// may have gone out with an earlier completion's follow-up, and what is left waits for the
    /// interval instead of going out as a stray small batch.
    func flush(fullBatchOnly: Bool = false) {
        let batch = self.state.withLock { state -> [FinishedSpan] in
            guard !state.sending, state.queue.count >= (fullBatchOnly ? self.batchSize : 1) else { return [] }
            state.sending = true
            let count = min(self.batchSize, state.queue.count)
            defer { state.queue.removeFirst(count) }
            return Array(state.queue.prefix(count))
        }
        guard !batch.isEmpty else { return }
        let body = OTLPJSON.encode(batch, serviceName: self.serviceName)
        self.transport(body, self.loop).hop(to: self.loop).whenComplete { result in
            let (more, report) = self.state.withLock { state -> (Bool, String?) in
                state.sending = false
                var report: String?
                switch result {
                case .success:
                    if state.failing { report = "OTLP export to the collector works again" }
                    state.failing = false
                case .failure(let error):
                    if !state.failing { report = "OTLP export failed (spans are dropped and counted until it works): \(error)" }
                    state.failing = true
                }
                // Once stopped, `shutdown` decides whether another batch fits its deadline.
                return (!state.stopped && state.queue.count >= self.batchSize, report)
            }
            if let report { GatewayLog.error(report) }
            switch result {
            case .success: self.onExport(batch.count)
            case .failure: self.onDrop("export_failed", batch.count)
            }
            if more { self.flush(fullBatchOnly: true) }
        }
    }

    /// Stops taking spans and sends what is queued, starting no batch after `deadline` (what is
    /// left is counted as dropped). A batch in flight is waited for (the sender's own timeout
    /// bounds it), so no send outlives the exporter's thread.
    func shutdown(deadline: Duration) async {
        await self.shutdown(until: .now + deadline)
    }

    func shutdown(until end: ContinuousClock.Instant) async {
        self.timer.cancel()
        self.state.withLock { $0.stopped = true }
        while true {
            let (sending, empty) = self.state.withLock { ($0.sending, $0.queue.isEmpty) }
            if !sending && (empty || ContinuousClock.now >= end) { break }
            if !sending { self.loop.execute { self.flush() } }
            try? await Task.sleep(for: .milliseconds(10))
        }
        let left = self.state.withLock { state -> Int in
            defer { state.queue = [] }
            return state.queue.count
        }
        if left > 0 { self.onDrop("shutdown", left) }
        try? await self.group.shutdownGracefully()
    }

    func shutdown() async {
        await self.shutdown(deadline: OTLPExporter.shutdownDeadline)
    }
}

/// One OTLP/HTTP `POST` per batch on a fresh connection (`Connection: close`): NIOHTTP1's client
/// codec, the shared `TLSClient` target for `https://`, one deadline covering connect, handshake
/// and response. 2xx is success (a partial success is still a success: the body is not read).
final class OTLPHTTPSender: Sendable {
    let endpoint: OTLPEndpoint
    let headers: [(String, String)]
    let timeout: TimeAmount
    private let tls: Mutex<Result<TLSClientContext, TLSClientError>?>

    init(endpoint: OTLPEndpoint, headers: [(String, String)], timeout: TimeAmount = .seconds(5)) {
        self.endpoint = endpoint
        self.headers = headers
        self.timeout = timeout
        self.tls = Mutex(nil)
    }

    /// Built on first use, off the event loops that serve requests (it reads the CA store).
    private func tlsContext() throws -> TLSClientContext {
        let result = self.tls.withLock { cached in
            if let cached { return cached }
            let made = Result { () throws(TLSClientError) in try TLSClientContext(alpn: ["http/1.1"], insecure: false) }
            cached = made
            return made
        }
        return try result.get()
    }

    func send(_ body: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        let tls: TLSClientContext?
        do {
            tls = self.endpoint.secure ? try self.tlsContext() : nil
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: self.endpoint.target)
        head.headers.add(name: "content-type", value: "application/json")
        head.headers.add(name: "content-length", value: String(body.readableBytes))
        head.headers.add(name: "user-agent", value: "barberpro-gateway-otlp")
        for (name, value) in self.headers { head.headers.add(name: name, value: value) }
        return OneShotHTTP.exchange(
            self.endpoint, tls: tls, head: head, body: body, accept: Self.accepts, maxBodyBytes: nil,
            timeout: self.timeout, on: eventLoop
        ).map { _ in }.flatMapErrorThrowing { error in throw Self.exportError(error) }
    }

    /// 2xx is success; a partial success is still one, so the body is read and dropped.
    static let accepts: @Sendable (HTTPResponseStatus) -> Bool = { (200..<300).contains($0.code) }

    static func exportError(_ error: Error) -> OTLPExportError {
        if let failure = error as? OneShotHTTP.Failure, let status = failure.status {
            return OTLPExportError("collector answered HTTP \(status.code)")
        }
        return OTLPExportError("\(error)")
    }
}

struct OTLPExportError: Error, CustomStringConvertible, Sendable {
    var description: String
    init(_ description: String) { self.description = description }
}

