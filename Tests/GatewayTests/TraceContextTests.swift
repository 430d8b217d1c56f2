import Foundation
import NIOCore
import NIOHTTP1
import Testing

@testable import Gateway

@Suite("W3C trace context")
struct TraceContextTests {
    static let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    @Test func validTraceparentIsContinuedWithItsSampledFlag() throws {
        let trace = TraceContext(traceparent: Self.valid)
        #expect(trace.continued)
        #expect(trace.sampled)
        #expect(trace.traceIDString == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(trace.parentSpanIDString == "00f067aa0ba902b7")
        // The gateway's own span is new: upstream sees it as the parent, not the caller's.
        #expect(trace.spanID != 0 && trace.spanID != trace.parentSpanID)
        let header = trace.headerValue
        #expect(header.utf8.count == 55)
        #expect(header.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736-"))
        #expect(header.hasSuffix("-01"))
        #expect(header == "00-4bf92f3577b34da6a3ce929d0e0e4736-\(trace.spanIDString)-01")

        let unsampled = TraceContext(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
        #expect(unsampled.continued && !unsampled.sampled)
        #expect(unsampled.headerValue.hasSuffix("-00"))
        // Flags other than `sampled` are not version 00's to forward.
        let otherFlags = TraceContext(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe")
        #expect(otherFlags.continued && otherFlags.flags == 0)
    }

    @Test("Invalid traceparent values start a new trace", arguments: [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  // no flags
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // uppercase
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  // version 00 is exactly 55
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // separator
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",  // not hex
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  // future version, no dash after flags
    ])
    func invalidStartsNewTrace(value: String) {
        let trace = TraceContext(traceparent: value)
        #expect(!trace.continued)
        #expect(trace.traceIDString != "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(trace.parentSpanID == 0)
        #expect(!trace.sampled)
    }

    @Test func futureVersionIsReadAsVersion00AndSurroundingSpaceIgnored() {
        let future = TraceContext(traceparent: "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds")
        #expect(future.continued && future.sampled)
        #expect(future.headerValue.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736-"))
        let padded = TraceContext(traceparent: " \(Self.valid)\t")
        #expect(padded.continued && padded.traceIDString == "4bf92f3577b34da6a3ce929d0e0e4736")
    }

    @Test func startedTracesAreUniqueValidAndSampledOnlyWhenAsked() throws {
        var traceIDs = Set<String>()
        var spanIDs = Set<UInt64>()
        for _ in 0..<1000 {
            let trace = TraceContext(traceparent: nil)
            #expect(!trace.continued && !trace.sampled)
            traceIDs.insert(trace.traceIDString)
            spanIDs.insert(trace.spanID)
            // What goes upstream parses back to the same trace, with the gateway's span as parent.
            let parsed = try #require(TraceContext.parse(trace.headerValue))
            #expect(parsed.high == trace.traceIDHigh && parsed.low == trace.traceIDLow && parsed.parent == trace.spanID)
        }
        #expect(traceIDs.count == 1000 && spanIDs.count == 1000)
        #expect(TraceContext(traceparent: nil, sampleNew: true).headerValue.hasSuffix("-01"))
        // A continued trace keeps the caller's decision whatever the gateway would pick.
        #expect(!TraceContext(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", sampleNew: true).sampled)
    }

    @Test func traceIDIsWrittenIntoErrorBodies() throws {
        let trace = TraceContext(traceparent: Self.valid)
        let response = GatewayError.notFound.response(requestID: "r-1", trace: trace, allocator: ByteBufferAllocator())
        let object = try #require(try JSONSerialization.jsonObject(with: Data(String(buffer: response.body).utf8)) as? [String: Any])
        let error = try #require(object["error"] as? [String: String])
        #expect(error["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(error["request_id"] == "r-1")
        #expect(error["code"] == "not_found")
        #expect(response.headers.first(name: "content-length") == String(response.body.readableBytes))
        // An error carrying its own trace (set by `RequestExchange`) writes it too.
        var carried = GatewayError.upstreamTimeout
        carried.trace = trace
        #expect(String(buffer: carried.response(requestID: "r-2", allocator: ByteBufferAllocator()).body).contains(#""trace_id":"4bf92f3577b34da6a3ce929d0e0e4736""#))
        #expect(!String(buffer: GatewayError.notFound.response(requestID: "r", allocator: ByteBufferAllocator()).body).contains("trace_id"))
    }

    static func forwarded(_ fields: [(String, String)], trace: TraceContext) -> HTTPHeaders {
        let head = RequestHead(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/api/x", headers: HTTPHeaders([("host", "x")] + fields)))
        let info = ForwardingInfo(
            peer: "203.0.113.9", requestID: "r", scheme: "https", host: "x", fallbackHost: "x", trace: trace
        )
        return HeaderRewriter.upstreamRequest(head, framing: .none, info: info).headers
    }

    @Test func upstreamGetsTheGatewaysTraceparentAndTracestateOnlyForAContinuedTrace() {
        let continued = TraceContext(traceparent: Self.valid)
        let headers = Self.forwarded([("traceparent", Self.valid), ("TraceState", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")], trace: continued)
        #expect(headers["traceparent"] == [continued.headerValue])
        #expect(headers["tracestate"] == ["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"])

        let started = TraceContext(traceparent: "garbage")
        let restarted = Self.forwarded([("traceparent", "garbage"), ("tracestate", "rojo=1")], trace: started)
        #expect(restarted["traceparent"] == [started.headerValue])
        #expect(restarted["tracestate"].isEmpty)

        let absent = TraceContext(traceparent: nil)
        #expect(Self.forwarded([], trace: absent)["traceparent"] == [absent.headerValue])
    }

    @Test func duplicateTraceparentFieldsAreInvalid() throws {
        let head = RequestHead(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: HTTPHeaders([
            ("host", "x"), ("traceparent", Self.valid), ("traceparent", Self.valid), ("user-agent", "curl/8"),
        ])))
        let validated = try RequestValidator.inspect(head).get()
        #expect(!TraceContext(traceparent: validated.traceparent).continued)
        let single = RequestHead(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: HTTPHeaders([
            ("host", "x"), ("Traceparent", Self.valid),
        ])))
        #expect(TraceContext(traceparent: try RequestValidator.inspect(single).get().traceparent).continued)
    }

    @Test func sampledRequestsReachAPluggedInExporterAndOthersCostNothing() throws {
        let exporter = RecordingExporter(samplesNew: true)
        let observability = Observability(accessLog: false, spanExporter: exporter)
        #expect(observability.samplesNewTraces)
        var record = RequestRecord(method: .GET, target: "/api/x?q=1", version: .http2)
        record.route = "api"
        record.status = 200
        record.source = .upstream
        record.trace = TraceContext(traceparent: Self.valid)
        observability.finished(record, tlsVersion: nil)
        record.trace = TraceContext(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
        observability.finished(record, tlsVersion: nil)
        let spans = exporter.spans
        #expect(spans.count == 1)
        let span = try #require(spans.first)
        #expect(span.trace.traceIDString == "4bf92f3577b34da6a3ce929d0e0e4736" && span.trace.parentSpanIDString == "00f067aa0ba902b7")
        #expect(span.name == "api" && span.status == 200 && span.source == .upstream && span.method == "GET")
        #expect(span.startNanoseconds <= span.endNanoseconds && span.endNanoseconds > 1_700_000_000 * 1_000_000_000)
        // Without an exporter nothing asks for a sample.
        #expect(!Observability(accessLog: false).samplesNewTraces)
    }
}

final class RecordingExporter: SpanExporter, @unchecked Sendable {
    private let lock = NSLock()
    private var recorded: [FinishedSpan] = []
    let samplesNew: Bool

    init(samplesNew: Bool) { self.samplesNew = samplesNew }

    func samplesNewTrace() -> Bool { self.samplesNew }

    func export(_ span: FinishedSpan) {
        self.lock.lock()
        self.recorded.append(span)
        self.lock.unlock()
    }

    var spans: [FinishedSpan] {
        self.lock.lock()
        defer { self.lock.unlock() }
        return self.recorded
    }
}
