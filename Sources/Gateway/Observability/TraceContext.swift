import NIOCore
import Synchronization

/// W3C Trace Context (https://www.w3.org/TR/trace-context/) for one request: the trace it belongs
/// to, the caller's span, and the gateway's own span, which upstream requests name as their parent.
///
/// A valid incoming `traceparent` is continued (its trace id and sampled flag kept, its `tracestate`
/// forwarded); an absent or invalid one starts a new trace (and its `tracestate` is dropped). Held
/// as integers: nothing is formatted on the event loop except the one `traceparent` value sent
/// upstream; the access log formats its ids on the log thread.
struct TraceContext: Sendable, Equatable {
    var traceIDHigh: UInt64
    var traceIDLow: UInt64
    /// The caller's span (the incoming parent-id); 0 for a trace the gateway started.
    var parentSpanID: UInt64
    /// The gateway's span for this request: the parent-id of the `traceparent` sent upstream.
    var spanID: UInt64
    /// Trace flags as forwarded: only `sampled` (0x01) is defined by version 00.
    var flags: UInt8

    var sampled: Bool { self.flags & 0x01 != 0 }
    /// Whether the trace came from the client (a valid `traceparent`), not started here.
    var continued: Bool { self.parentSpanID != 0 }

    /// Continues `traceparent` when it is valid, else starts a trace (`sampleNew` decides the
    /// sampled flag of a started one; a continued trace keeps the caller's decision).
    init(traceparent: String?, sampleNew: Bool = false) {
        let ids = TraceIDs.next()
        self.spanID = ids.span
        if let traceparent, let parsed = Self.parse(traceparent) {
            self.traceIDHigh = parsed.high
            self.traceIDLow = parsed.low
            self.parentSpanID = parsed.parent
            self.flags = parsed.flags & 0x01
        } else {
            self.traceIDHigh = ids.high
            self.traceIDLow = ids.low
            self.parentSpanID = 0
            self.flags = sampleNew ? 0x01 : 0x00
        }
    }

    init(traceIDHigh: UInt64, traceIDLow: UInt64, parentSpanID: UInt64, spanID: UInt64, flags: UInt8) {
        self.traceIDHigh = traceIDHigh
        self.traceIDLow = traceIDLow
        self.parentSpanID = parentSpanID
        self.spanID = spanID
        self.flags = flags
    }

    // MARK: - Parsing

    /// A `traceparent` value: `version-traceid-parentid-flags`, lowercase hex. Version `ff` is
    /// invalid; a higher version than 00 is read as 00 when its first four fields are 00's shape
    /// (the spec's forward-compatibility rule); all-zero trace or parent ids are invalid.
    static func parse(_ value: String) -> (high: UInt64, low: UInt64, parent: UInt64, flags: UInt8)? {
        value.withUTF8Bytes { bytes in
            // Surrounding OWS is not part of a field value.
            var start = 0, end = bytes.count
            while start < end, bytes[start] == UInt8(ascii: " ") || bytes[start] == UInt8(ascii: "\t") { start += 1 }
            while end > start, bytes[end - 1] == UInt8(ascii: " ") || bytes[end - 1] == UInt8(ascii: "\t") { end -= 1 }
            guard end - start >= 55 else { return nil }
            let fields = UnsafeBufferPointer(rebasing: bytes[start..<end])
            guard let version = hex(fields, 0, 2), version != 0xFF else { return nil }
            if version == 0 {
                guard fields.count == 55 else { return nil }
            } else if fields.count > 55 {
                guard fields[55] == UInt8(ascii: "-") else { return nil }
            }
            guard fields[2] == UInt8(ascii: "-"), fields[35] == UInt8(ascii: "-"), fields[52] == UInt8(ascii: "-"),
                let high = hex(fields, 3, 16), let low = hex(fields, 19, 16), high | low != 0,
                let parent = hex(fields, 36, 16), parent != 0,
                let flags = hex(fields, 53, 2)
            else { return nil }
            return (high, low, parent, UInt8(flags))
        }
    }

    /// `count` lowercase hex digits at `offset` (uppercase is invalid in `traceparent`).
    private static func hex(_ bytes: UnsafeBufferPointer<UInt8>, _ offset: Int, _ count: Int) -> UInt64? {
        var value: UInt64 = 0
        for index in offset..<(offset + count) {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte &- UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte &- UInt8(ascii: "a") &+ 10
            default: return nil
            }
            value = value << 4 | UInt64(digit)
        }
        return value
    }

    // MARK: - Formatting

    /// The `traceparent` sent upstream: this trace, the gateway's span as parent. One allocation
    /// (55 bytes do not fit a small string); the closure captures nothing it could box.
    var headerValue: String {
        let (high, low, span, flags) = (self.traceIDHigh, self.traceIDLow, self.spanID, self.flags)
        return String(unsafeUninitializedCapacity: 55) { buffer in
            Self.writeTraceparent(high, low, span, flags, into: buffer)
        }
    }

    /// `traceparent`'s 55 bytes straight into a head being written (`ForwardedRequestHead`).
    func writeHeaderValue(into buffer: UnsafeMutableBufferPointer<UInt8>) -> Int {
        Self.writeTraceparent(self.traceIDHigh, self.traceIDLow, self.spanID, self.flags, into: buffer)
    }

    static let headerValueLength = 55

    private static func writeTraceparent(
        _ high: UInt64, _ low: UInt64, _ span: UInt64, _ flags: UInt8, into buffer: UnsafeMutableBufferPointer<UInt8>
    ) -> Int {
        buffer[0] = UInt8(ascii: "0")
        buffer[1] = UInt8(ascii: "0")
        buffer[2] = UInt8(ascii: "-")
        var index = 3
        writeHex(high, digits: 16, into: buffer, at: &index)
        writeHex(low, digits: 16, into: buffer, at: &index)
        buffer[index] = UInt8(ascii: "-")
        index += 1
        writeHex(span, digits: 16, into: buffer, at: &index)
        buffer[index] = UInt8(ascii: "-")
        index += 1
        writeHex(UInt64(flags), digits: 2, into: buffer, at: &index)
        return index
    }

    /// The 32 hex digits of the trace id, as logs and error bodies show it.
    var traceIDString: String { Self.hexString(self.traceIDHigh, self.traceIDLow, count: 2) }

    var spanIDString: String { Self.hexString(self.spanID, 0, count: 1) }

    var parentSpanIDString: String { Self.hexString(self.parentSpanID, 0, count: 1) }

    /// Writes the trace id's 32 hex digits into `buffer` (error bodies: no intermediate String).
    func writeTraceID(into buffer: inout ByteBuffer) {
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 32) { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            var index = 0
            Self.writeHex(self.traceIDHigh, digits: 16, into: bytes, at: &index)
            Self.writeHex(self.traceIDLow, digits: 16, into: bytes, at: &index)
            return index
        }
    }

    /// The first `count` (1 or 2) of `first`, `second` as 16 hex digits each.
    private static func hexString(_ first: UInt64, _ second: UInt64, count: Int) -> String {
        String(unsafeUninitializedCapacity: count * 16) { buffer in
            var index = 0
            writeHex(first, digits: 16, into: buffer, at: &index)
            if count == 2 { writeHex(second, digits: 16, into: buffer, at: &index) }
            return index
        }
    }

    private static func writeHex(_ value: UInt64, digits: Int, into buffer: UnsafeMutableBufferPointer<UInt8>, at index: inout Int) {
        var shift = (digits - 1) * 4
        while shift >= 0 {
            let nibble = UInt8(truncatingIfNeeded: value >> UInt64(shift)) & 0x0F
            buffer[index] = nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
            index += 1
            shift -= 4
        }
    }
}

/// Trace and span ids: a per-process random key mixed with a counter (splitmix64, a bijection, so
/// ids never repeat within a process). No syscall and no lock per request, one atomic add.
private enum TraceIDs {
    private static let keys: (UInt64, UInt64, UInt64) = {
        var generator = SystemRandomNumberGenerator()
        return (generator.next(), generator.next(), generator.next())
    }()
    private static let counter = Atomic<UInt64>(0)

    static func next() -> (high: UInt64, low: UInt64, span: UInt64) {
        let n = self.counter.add(1, ordering: .relaxed).newValue
        let keys = self.keys
        let high = mix(keys.0 &+ n)
        var low = mix(keys.1 &+ n)
        var span = mix(keys.2 &+ n)
        // All-zero ids are invalid; one in 2^64 draws, mapped away rather than retried.
        if high | low == 0 { low = 1 }
        if span == 0 { span = 1 }
        return (high, low, span)
    }

    private static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// One request's span as an exporter receives it (OTLP's `Span`, kind SERVER).
struct FinishedSpan: Sendable {
    var trace: TraceContext
    /// The route name, or `-` when none matched (OTLP span name: low cardinality).
    var name: String
    var startNanoseconds: UInt64
    var endNanoseconds: UInt64
    var method: String
    var status: Int
    var source: ResponseSource
    var upstreamEndpoint: String?
    /// The request path without its query string (`url.path`).
    var path = ""
    /// The `Host` / `:authority` the client sent (`server.address`).
    var host: String?
    /// `client.address`: the client as `client_ip` resolved it.
    var clientIP = ""
}

/// Where sampled spans go: `OTLPExporter` when `tracing.otlp_endpoint` is set; without one, no span
/// is built.
protocol SpanExporter: Sendable {
    /// Whether a trace the gateway starts (no valid `traceparent` came in) is sampled.
    func samplesNewTrace() -> Bool
    /// Called on an event loop once per sampled request: must not block (queue, export in batches).
    func export(_ span: FinishedSpan)
    /// Sends what is still queued, within a deadline of its own (the gateway is shutting down).
    func shutdown() async
}

extension SpanExporter {
    func shutdown() async {}
}
