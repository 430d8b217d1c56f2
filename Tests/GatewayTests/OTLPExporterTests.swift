import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Synchronization
import Testing
@testable import Gateway

@Suite("OTLP exporter: JSON encoding, batching, config")
struct OTLPExporterTests {
    static let continued = TraceContext(
        traceIDHigh: 0x4bf9_2f35_77b3_4da6, traceIDLow: 0xa3ce_929d_0e0e_4736,
        parentSpanID: 0x00f0_67aa_0ba9_02b7, spanID: 0xABCD_EF01_2345_6789, flags: 1
    )

    static func span(_ trace: TraceContext = continued, name: String = "api", status: Int = 200) -> FinishedSpan {
        FinishedSpan(
            trace: trace, name: name, startNanoseconds: 1_764_500_000_123_456_789,
            endNanoseconds: 1_764_500_000_223_456_789, method: "GET", status: status, source: .upstream,
            upstreamEndpoint: "127.0.0.1:3001", path: "/api/\"q\"", host: "gw.example:8443", clientIP: "10.0.0.7"
        )
    }

    static func decode(_ buffer: ByteBuffer) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(buffer.readableBytesView))
        return try #require(object as? [String: Any])
    }

    /// The spans of the first resource and scope, and the resource's attributes.
    static func spans(_ json: [String: Any]) throws -> (spans: [[String: Any]], resource: [[String: Any]]) {
        let resourceSpans = try #require(json["resourceSpans"] as? [[String: Any]])
        #expect(resourceSpans.count == 1)
        let resource = try #require(resourceSpans[0]["resource"] as? [String: Any])
        let scopeSpans = try #require(resourceSpans[0]["scopeSpans"] as? [[String: Any]])
        let scope = try #require(scopeSpans.first?["scope"] as? [String: Any])
        #expect(scope["name"] as? String == "barberpro-gateway")
        return (try #require(scopeSpans[0]["spans"] as? [[String: Any]]), try #require(resource["attributes"] as? [[String: Any]]))
    }

    /// `key` → its `AnyValue` object.
    static func attributes(_ list: [[String: Any]]) -> [String: [String: Any]] {
        var out: [String: [String: Any]] = [:]
        for item in list {
            if let key = item["key"] as? String, let value = item["value"] as? [String: Any] { out[key] = value }
        }
        return out
    }

    @Test func encodesTheOTLPJSONMapping() throws {
        let json = try Self.decode(OTLPJSON.encode([Self.span()], serviceName: "edge \"1\""))
        let (spans, resource) = try Self.spans(json)
        #expect(Self.attributes(resource)["service.name"]?["stringValue"] as? String == "edge \"1\"")
        let span = try #require(spans.first)
        // Ids: lowercase hex of the exact widths (16 and 8 bytes).
        #expect(span["traceId"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(span["spanId"] as? String == "abcdef0123456789")
        #expect(span["parentSpanId"] as? String == "00f067aa0ba902b7")
        #expect(span["name"] as? String == "GET api")
        // Enums as numbers (SPAN_KIND_SERVER = 2), fixed64 nanos as decimal strings.
        #expect((span["kind"] as? NSNumber)?.intValue == 2 && !(span["kind"] is String))
        #expect(span["startTimeUnixNano"] as? String == "1764500000123456789")
        #expect(span["endTimeUnixNano"] as? String == "1764500000223456789")
        #expect(span["status"] == nil)
        let attributes = Self.attributes(try #require(span["attributes"] as? [[String: Any]]))
        #expect(attributes["http.request.method"]?["stringValue"] as? String == "GET")
        #expect(attributes["url.path"]?["stringValue"] as? String == "/api/\"q\"")
        // int64 in the JSON mapping is a decimal string.
        #expect(attributes["http.response.status_code"]?["intValue"] as? String == "200")
        #expect(attributes["http.route"]?["stringValue"] as? String == "api")
        #expect(attributes["server.address"]?["stringValue"] as? String == "gw.example")
        #expect(attributes["server.port"]?["intValue"] as? String == "8443")
        #expect(attributes["client.address"]?["stringValue"] as? String == "10.0.0.7")
        #expect(attributes["gateway.source"]?["stringValue"] as? String == "upstream")
        #expect(attributes["gateway.upstream.endpoint"]?["stringValue"] as? String == "127.0.0.1:3001")
    }

    @Test func startedTraceHasNoParentAndServerErrorsAreErrors() throws {
        let started = TraceContext(traceIDHigh: 1, traceIDLow: 2, parentSpanID: 0, spanID: 3, flags: 1)
        let spans = [Self.span(started, name: "-", status: 503), Self.span(status: 404)]
        let (encoded, _) = try Self.spans(try Self.decode(OTLPJSON.encode(spans, serviceName: "s")))
        #expect(encoded.count == 2)
        #expect(encoded[0]["parentSpanId"] == nil)
        #expect(encoded[0]["traceId"] as? String == "00000000000000010000000000000002")
        #expect(encoded[0]["spanId"] as? String == "0000000000000003")
        #expect(encoded[0]["name"] as? String == "GET")
        let attributes = Self.attributes(try #require(encoded[0]["attributes"] as? [[String: Any]]))
        #expect(attributes["http.route"] == nil)
        // STATUS_CODE_ERROR = 2 for a 5xx; a 4xx leaves a server span's status unset.
        #expect(((encoded[0]["status"] as? [String: Any])?["code"] as? NSNumber)?.intValue == 2)
        #expect(encoded[1]["status"] == nil)
    }

    @Test func splitsHostIntoAddressAndPort() {
        #expect(OTLPJSON.splitHost("a.example") == ("a.example", nil))
        #expect(OTLPJSON.splitHost("a.example:80") == ("a.example", 80))
        #expect(OTLPJSON.splitHost("[::1]:8443") == ("::1", 8443))
        #expect(OTLPJSON.splitHost("::1") == ("::1", nil))
    }

    @Test func endpointTargetsTheTracesSignal() throws {
        let plain = try #require(OTLPEndpoint(url: "http://127.0.0.1:4318"))
        #expect(plain.target == "/v1/traces" && plain.port == 4318 && !plain.secure && plain.authority == "127.0.0.1:4318")
        let prefixed = try #require(OTLPEndpoint(url: "https://otel.example/otlp/"))
        #expect(prefixed.target == "/otlp/v1/traces" && prefixed.port == 443 && prefixed.secure && prefixed.authority == "otel.example")
        #expect(OTLPEndpoint(url: "grpc://x:4317") == nil)
        #expect(OTLPEndpoint(url: "http://u:p@x:4318") == nil)
    }

    // MARK: - Batching

    /// Records every batch; completes sends only when told (`release`), or at once when `autoComplete`.
    final class Transport: Sendable {
        struct State {
            var batches: [Int] = []
            var pending: [EventLoopPromise<Void>] = []
            var autoComplete: Bool
            /// The exporter's loop, as the last send named it.
            var loop: EventLoop?
        }
        let state: Mutex<State>
        let fail: Bool

        init(autoComplete: Bool, fail: Bool = false) {
            self.state = Mutex(State(autoComplete: autoComplete))
            self.fail = fail
        }

        /// Sends from now on complete at once.
        func completeFromNowOn() { self.state.withLock { $0.autoComplete = true } }

        func send(_ body: ByteBuffer, _ loop: EventLoop) -> EventLoopFuture<Void> {
            let count = ((try? OTLPExporterTests.spans(OTLPExporterTests.decode(body)).spans.count) ?? -1)
            let promise = loop.makePromise(of: Void.self)
            let autoComplete = self.state.withLock {
                $0.batches.append(count)
                $0.loop = loop
                if !$0.autoComplete { $0.pending.append(promise) }
                return $0.autoComplete
            }
            if autoComplete {
                if self.fail { promise.fail(OTLPExportError("refused")) } else { promise.succeed() }
            }
            return promise.futureResult
        }

        func release() {
            for promise in self.state.withLock({ state in defer { state.pending = [] }; return state.pending }) {
                promise.succeed()
            }
        }

        var batches: [Int] { self.state.withLock { $0.batches } }
        var loop: EventLoop? { self.state.withLock { $0.loop } }
    }

    final class Counts: Sendable {
        let dropped = Mutex<[String: Int]>([:])
        let exported = Atomic<Int>(0)
    }

    static func exporter(_ transport: Transport, counts: Counts, capacity: Int, batch: Int, ratio: Double = 0) -> OTLPExporter {
        OTLPExporter(
            serviceName: "t", sampleRatio: ratio, flushInterval: .seconds(60), queueCapacity: capacity, batchSize: batch,
            transport: { transport.send($0, $1) },
            onDrop: { reason, count in counts.dropped.withLock { $0[reason, default: 0] += count } },
            onExport: { counts.exported.add($0, ordering: .relaxed) }
        )
    }

    static func waitUntil(_ condition: () -> Bool) async {
        let deadline = ContinuousClock.now + .seconds(10)
        while !condition() && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(5)) }
    }

    @Test func aFullBatchGoesOutWithoutWaitingForTheInterval() async {
        let transport = Transport(autoComplete: true), counts = Counts()
        let exporter = Self.exporter(transport, counts: counts, capacity: 64, batch: 8)
        for _ in 0..<17 { exporter.export(Self.span()) }
        await Self.waitUntil { transport.batches.count >= 2 }
        // Two full batches, the 17th span waits for the interval (60 s): not sent.
        #expect(transport.batches == [8, 8])
        await exporter.shutdown(deadline: .seconds(5))
        #expect(transport.batches == [8, 8, 1])
        #expect(counts.exported.load(ordering: .relaxed) == 17)
        #expect(counts.dropped.withLock { $0 }.isEmpty)
    }

    /// The race a loaded CI run hit: a batch fills while one is in flight, so a flush is queued for
    /// it; the in-flight batch's completion sends the full batch first. The queued flush then finds
    /// one span and must leave it for the interval.
    @Test func aFlushQueuedForABatchAlreadySentSendsNoStrayBatch() async throws {
        let transport = Transport(autoComplete: false), counts = Counts()
        let exporter = Self.exporter(transport, counts: counts, capacity: 64, batch: 8)
        for _ in 0..<8 { exporter.export(Self.span()) }
        await Self.waitUntil { transport.batches.count == 1 }
        let loop = try #require(transport.loop)
        try await loop.submit {
            for _ in 0..<9 { exporter.export(Self.span()) }  // the 16th queues a flush behind this task
            transport.completeFromNowOn()
            transport.release()  // the completion's follow-up sends spans 9...16 at once
        }.get()
        try await loop.submit {}.get()  // the queued flush has run
        #expect(transport.batches == [8, 8])
        await exporter.shutdown(deadline: .seconds(5))
        #expect(transport.batches == [8, 8, 1])
        #expect(counts.exported.load(ordering: .relaxed) == 17)
    }

    @Test func aFullQueueDropsAndCounts() async {
        let transport = Transport(autoComplete: false), counts = Counts()
        let exporter = Self.exporter(transport, counts: counts, capacity: 4, batch: 100)
        for _ in 0..<10 { exporter.export(Self.span()) }
        #expect(counts.dropped.withLock { $0 } == ["queue_full": 6])
        #expect(transport.batches.isEmpty)
        let shutdown = Task { await exporter.shutdown(deadline: .seconds(5)) }
        await Self.waitUntil { transport.batches.count == 1 }
        // Sticky: should the batch come after the wait gave up, it must not hold shutdown forever.
        transport.completeFromNowOn()
        transport.release()
        await shutdown.value
        #expect(transport.batches == [4])
        #expect(counts.exported.load(ordering: .relaxed) == 4)
        // After shutdown nothing is queued.
        exporter.export(Self.span())
        #expect(counts.dropped.withLock { $0 } == ["queue_full": 6, "shutdown": 1])
    }

    @Test func aBatchTheCollectorRefusesIsCounted() async {
        let transport = Transport(autoComplete: true, fail: true), counts = Counts()
        let exporter = Self.exporter(transport, counts: counts, capacity: 64, batch: 3)
        for _ in 0..<3 { exporter.export(Self.span()) }
        await Self.waitUntil { counts.dropped.withLock { $0["export_failed"] } == 3 }
        #expect(counts.dropped.withLock { $0 } == ["export_failed": 3])
        #expect(counts.exported.load(ordering: .relaxed) == 0)
        await exporter.shutdown(deadline: .seconds(1))
    }

    @Test func shutdownGivesUpAtItsDeadlineAndCountsTheRest() async {
        let transport = Transport(autoComplete: false), counts = Counts()
        let exporter = Self.exporter(transport, counts: counts, capacity: 64, batch: 2)
        for _ in 0..<5 { exporter.export(Self.span()) }
        await Self.waitUntil { transport.batches.count == 1 }
        // One batch of 2 is in flight and answered only after the deadline; 3 wait behind it.
        let end = ContinuousClock.now + .milliseconds(100)
        let shutdown = Task { await exporter.shutdown(until: end) }
        await Self.waitUntil { ContinuousClock.now > end + .milliseconds(50) }
        transport.release()
        await shutdown.value
        #expect(transport.batches == [2])
        #expect(counts.exported.load(ordering: .relaxed) == 2)
        #expect(counts.dropped.withLock { $0 } == ["shutdown": 3])
    }

    @Test func sampleRatioOfNewTraces() async {
        let transport = Transport(autoComplete: true), counts = Counts()
        for (ratio, range) in [(0.0, 0...0), (1.0, 1000...1000), (0.25, 150...350)] {
            let exporter = Self.exporter(transport, counts: counts, capacity: 1, batch: 1, ratio: ratio)
            let sampled = (0..<1000).filter { _ in exporter.samplesNewTrace() }.count
            #expect(range.contains(sampled), "ratio \(ratio): \(sampled) of 1000")
            await exporter.shutdown(deadline: .seconds(1))
        }
    }

    // MARK: - Collector responses

    /// The export's outcome for `parts` arriving on a fresh connection (nil: still pending).
    static func outcome(_ parts: [HTTPClientResponsePart], close: Bool = false) throws -> Result<Void, Error>? {
        let channel = EmbeddedChannel()
        let promise = channel.eventLoop.makePromise(of: OneShotHTTP.Response.self)
        try channel.pipeline.syncOperations.addHandler(
            OneShotResponseCollector(promise: promise, accept: OTLPHTTPSender.accepts, maxBodyBytes: nil))
        let result = Mutex<Result<Void, Error>?>(nil)
        promise.futureResult.whenComplete { outcome in
            result.withLock { $0 = outcome.map { _ in }.mapError { OTLPHTTPSender.exportError($0) } }
        }
        for part in parts { try channel.writeInbound(part) }
        if close { channel.pipeline.fireChannelInactive() }
        let outcome = result.withLock { $0 }
        if outcome == nil { promise.succeed(OneShotHTTP.Response(status: .ok, headers: [:], body: [])) }
        _ = try? channel.finish()
        return outcome
    }

    @Test func collectorAnswersDecideTheExport() throws {
        let accepted = HTTPResponseHead(version: .http1_1, status: .ok)
        let body = HTTPClientResponsePart.body(ByteBuffer(string: #"{"partialSuccess":{}}"#))
        #expect(try Self.outcome([.head(accepted), body, .end(nil)]).map { (try? $0.get()) != nil } == true)
        // Success only once the response has ended.
        #expect(try Self.outcome([.head(accepted), body]) == nil)
        let refused = try #require(try Self.outcome([.head(HTTPResponseHead(version: .http1_1, status: .tooManyRequests)), .end(nil)]))
        #expect("\(refused)".contains("collector answered HTTP 429"))
        let cut = try #require(try Self.outcome([.head(accepted)], close: true))
        #expect("\(cut)".contains("connection closed before the response ended"))
    }

    // MARK: - Config

    @Test func tracingConfigDefaultsAndValues() throws {
        let fixture = try ConfigFixture()
        let defaults = try fixture.parse(minimalYAML)
        #expect(defaults.tracing == .defaults && defaults.tracing.otlpEndpoint == nil)
        let config = try fixture.parse(minimalYAML + """
        tracing:
          otlp_endpoint: http://127.0.0.1:4318
          sample_ratio: 0.1
          service_name: edge
          flush_interval: 250ms
          headers: { x-api-key: "${OTLP_KEY}" }
        """, environment: ["OTLP_KEY": "s3cret"])
        #expect(config.tracing.otlpEndpoint == "http://127.0.0.1:4318")
        #expect(config.tracing.sampleRatio == 0.1 && config.tracing.serviceName == "edge")
        #expect(config.tracing.flushInterval == .milliseconds(250))
        #expect(config.tracing.headers == [TracingHeader(name: "x-api-key", value: ConfigSecret("s3cret"))])
        // The key never shows in GET /config.
        #expect(!ConfigDump.json(config.tracing).contains("s3cret"))
    }

    @Test func tracingConfigErrors() throws {
        let fixture = try ConfigFixture()
        let errors = fixture.errors(minimalYAML + """
        tracing:
          otlp_endpoint: ftp://collector
          sample_ratio: 1.5
          service_name: ""
          flush_interval: 1ms
          headers: { "bad name": x, content-type: text/plain, x-key: "a\\nb" }
          sampel_ratio: 1
        """)
        #expect(errors.contains("tracing.otlp_endpoint: the scheme must be http or https, got 'ftp'"))
        #expect(errors.contains("tracing.sample_ratio: expected a number between 0 and 1, got '1.5'"))
        #expect(errors.contains("tracing.service_name: must not be empty"))
        #expect(errors.contains("tracing.flush_interval: must be at least 10ms, got '1ms'"))
        #expect(errors.contains("tracing.headers.bad name: a field name may only use letters, digits and !#$%&'*+-.^_`|~"))
        #expect(errors.contains("tracing.headers.content-type: set by the exporter itself, cannot be configured"))
        #expect(errors.contains("tracing.headers.x-key: field values must not contain control characters"))
        #expect(errors.contains("tracing.sampel_ratio: unknown key (did you mean 'sample_ratio'?)"))
        fixture.expectError(minimalYAML + "tracing: { otlp_endpoint: 'http://127.0.0.1:4318/?a=1' }\n",
                            "tracing.otlp_endpoint: the URL must not have a query or fragment")
    }

    @Test func noEndpointNoExporter() {
        #expect(Observability(accessLog: false, tracing: .defaults).spanExporter == nil)
    }
}
