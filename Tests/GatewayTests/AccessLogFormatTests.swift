import Foundation
import Testing

@testable import Gateway

/// The access log's byte writer against the `String` formatter it replaced (kept here as the
/// reference): random records, with quotes, backslashes, control bytes, non-ASCII text, absent
/// fields and traces, must give the same line byte for byte.
@Suite("Access log line format")
struct AccessLogFormatTests {
    @Test func byteWriterMatchesTheStringFormatter() {
        var generator = SystemRandomNumberGenerator()
        let alphabet: [String] = ["a", "Z", "0", "/", " ", "\"", "\\", "\n", "\r", "\t", "\u{01}", "\u{1F}", "\u{7F}", "é", "🚀", "?", "="]
        func text(_ maxLength: Int) -> String {
            (0..<Int.random(in: 0...maxLength, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! }.joined()
        }
        func maybe(_ value: @autoclosure () -> String) -> String? { Bool.random(using: &generator) ? value() : nil }
        let traces: [TraceContext?] = [
            nil, TraceContext(traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            TraceContext(traceIDHigh: 1, traceIDLow: 2, parentSpanID: 0, spanID: 3, flags: 0),
        ]
        var clock = JSONBytes.Clock()
        var batch = JSONBytes()
        var expectedBatch = ""
        for index in 0..<2_000 {
            let path = text(40)
            var record = AccessLogRecord(
                time: Date(timeIntervalSince1970: 1_790_000_000 + Double(index / 100) + Double.random(in: 0..<1, using: &generator)),
                requestID: text(36), clientIP: text(15), method: text(7), route: text(12),
                path: path[...], status: Int.random(in: 100...599, using: &generator),
                bytesIn: Int.random(in: 0...10_000_000, using: &generator), bytesOut: Int.random(in: 0...10_000_000, using: &generator),
                durationSeconds: Double.random(in: 0...100, using: &generator),
                upstreamSeconds: Bool.random(using: &generator) ? Double.random(in: 0...3, using: &generator) : nil,
                protocolName: Bool.random(using: &generator) ? "HTTP/2" : "HTTP/1.1", tlsVersion: maybe(text(8)),
                rateLimit: maybe(text(10)), subjectHash: maybe(text(16)), upstreamEndpoint: maybe(text(21))
            )
            record.source = [.upstream, .local, .health, .clientAbort].randomElement(using: &generator)!
            record.host = maybe(text(20))
            record.userAgent = maybe(text(300))
            record.upstreamStatus = Bool.random(using: &generator) ? Int.random(in: 100...599, using: &generator) : nil
            record.trace = traces.randomElement(using: &generator)!
            let expected = Self.reference(record)
            #expect(record.json() == expected)
            record.writeJSON(into: &batch, clock: &clock)
            batch.append("\n")
            expectedBatch += expected + "\n"
        }
        // One clock across a batch, as the writer thread formats it.
        #expect(String(decoding: batch.bytes, as: UTF8.self) == expectedBatch)
    }

    /// The formatter before the byte writer (2026-12-01), verbatim but for its name and escaping.
    static func reference(_ record: AccessLogRecord) -> String {
        var out = "{\"time\":\""
        appendTimestamp(record.time, to: &out)
        out += "\""
        func field(_ name: StaticString, _ value: String?) {
            guard let value else { return }
            out += ",\"" + name.description + "\":\""
            appendEscaped(value, to: &out)
            out += "\""
        }
        func number(_ name: StaticString, _ value: Double?) {
            guard let value else { return }
            out += ",\"" + name.description + "\":"
            let micros = Int((value * 1_000_000).rounded())
            out += String(micros / 1_000_000) + "."
            let fraction = String(micros % 1_000_000)
            out += String(repeating: "0", count: 6 - fraction.utf8.count) + fraction
        }
        field("request_id", record.requestID)
        field("client_ip", record.clientIP)
        field("method", record.method)
        field("route", record.route)
        field("path", String(record.path))
        out += ",\"status\":\(record.status),\"bytes_in\":\(record.bytesIn),\"bytes_out\":\(record.bytesOut)"
        number("duration_s", record.durationSeconds)
        number("upstream_s", record.upstreamSeconds)
        field("protocol", record.protocolName)
        field("tls_version", record.tlsVersion)
        field("rate_limit", record.rateLimit)
        field("subject_hash", record.subjectHash)
        field("upstream", record.upstreamEndpoint)
        if let upstreamStatus = record.upstreamStatus { out += ",\"upstream_status\":\(upstreamStatus)" }
        field("source", record.source.name)
        field("host", record.host)
        field("user_agent", record.userAgent.map(AccessLogRecord.truncatedUserAgent))
        if let trace = record.trace {
            field("trace_id", trace.traceIDString)
            field("span_id", trace.spanIDString)
            if trace.continued { field("parent_span_id", trace.parentSpanIDString) }
            out += trace.sampled ? ",\"sampled\":true" : ",\"sampled\":false"
        }
        return out + "}"
    }

    private static func appendTimestamp(_ date: Date, to out: inout String) {
        let seconds = date.timeIntervalSince1970
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        func digits(_ value: Int, _ width: Int) {
            let text = String(value)
            if text.utf8.count < width { out += String(repeating: "0", count: width - text.utf8.count) }
            out += text
        }
        digits(Int(parts.tm_year) + 1900, 4); out += "-"
        digits(Int(parts.tm_mon) + 1, 2); out += "-"
        digits(Int(parts.tm_mday), 2); out += "T"
        digits(Int(parts.tm_hour), 2); out += ":"
        digits(Int(parts.tm_min), 2); out += ":"
        digits(Int(parts.tm_sec), 2); out += "."
        digits(min(999, Int((seconds - Double(t)) * 1000)), 3); out += "Z"
    }

    /// Escaping as `JSON.escaped` did it before it shared the byte writer: written out here, so
    /// the reference does not lean on the code under test.
    private static func appendEscaped(_ value: String, to out: inout String) {
        var bytes: [UInt8] = []
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes += Array("\\\"".utf8)
            case UInt8(ascii: "\\"): bytes += Array("\\\\".utf8)
            case 0x0A: bytes += Array("\\n".utf8)
            case 0x0D: bytes += Array("\\r".utf8)
            case 0x09: bytes += Array("\\t".utf8)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes += Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            default: bytes.append(byte)
            }
        }
        out += String(decoding: bytes, as: UTF8.self)
    }
}
