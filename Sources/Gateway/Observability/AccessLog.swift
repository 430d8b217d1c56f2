import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One request as the access log records it. Personal-data policy: the path without its query
/// string, a hash of the JWT subject instead of the subject, never tokens, cookies or secrets.
struct AccessLogRecord {
    var time: Date
    var requestID: String
    var clientIP: String
    var method: String
    var route: String
    var path: Substring
    var status: Int
    var bytesIn: Int
    var bytesOut: Int
    var durationSeconds: Double
    var upstreamSeconds: Double?
    var protocolName: String
    var tlsVersion: String?
    var rateLimit: String?
    var subjectHash: String?
    var upstreamEndpoint: String?
    /// Why the response happened (`ResponseSource.name`).
    var source: ResponseSource = .local
    var host: String? = nil
    /// Logged truncated to `userAgentLimit` bytes: the header is client-controlled and unbounded.
    var userAgent: String? = nil
    var upstreamStatus: Int? = nil
    var trace: TraceContext? = nil

    static let userAgentLimit = 256

    /// One JSON object, no trailing newline.
    func json() -> String {
        var line = JSONBytes()
        var clock = JSONBytes.Clock()
        self.writeJSON(into: &line, clock: &clock)
        return String(decoding: line.bytes, as: UTF8.self)
    }

    /// Appends the record's JSON object (no newline). Written by the log thread, not the event
    /// loops, as bytes: one `String` append per field made formatting ~15% of the gateway's CPU
    /// on an HTTP/2 load with the access log on.
    func writeJSON(into out: inout JSONBytes, clock: inout JSONBytes.Clock) {
        out.append("{\"time\":\"")
        out.appendTimestamp(self.time, clock: &clock)
        out.append("\"")
        func field(_ name: StaticString, _ value: String?) {
            guard let value else { return }
            out.append(",\"")
            out.append(name)
            out.append("\":\"")
            value.withUTF8Bytes { out.appendEscaped($0) }
            out.append("\"")
        }
        func integer(_ name: StaticString, _ value: Int) {
            out.append(",\"")
            out.append(name)
            out.append("\":")
            out.appendDecimal(value)
        }
        func seconds(_ name: StaticString, _ value: Double?) {
            guard let value else { return }
            out.append(",\"")
            out.append(name)
            out.append("\":")
            out.appendSeconds(value)
        }
        field("request_id", self.requestID)
        field("client_ip", self.clientIP)
        field("method", self.method)
        field("route", self.route)
        out.append(",\"path\":\"")
        self.path.withUTF8Bytes { out.appendEscaped($0) }
        out.append("\"")
        integer("status", self.status)
        integer("bytes_in", self.bytesIn)
        integer("bytes_out", self.bytesOut)
        seconds("duration_s", self.durationSeconds)
        seconds("upstream_s", self.upstreamSeconds)
        field("protocol", self.protocolName)
        field("tls_version", self.tlsVersion)
        field("rate_limit", self.rateLimit)
        field("subject_hash", self.subjectHash)
        field("upstream", self.upstreamEndpoint)
        if let upstreamStatus { integer("upstream_status", upstreamStatus) }
        field("source", self.source.name)
        field("host", self.host)
        field("user_agent", self.userAgent.map(Self.truncatedUserAgent))
        if let trace {
            field("trace_id", trace.traceIDString)
            field("span_id", trace.spanIDString)
            if trace.continued { field("parent_span_id", trace.parentSpanIDString) }
            out.append(trace.sampled ? ",\"sampled\":true" : ",\"sampled\":false")
        }
        out.append("}")
    }

    /// At most `userAgentLimit` bytes, cut at a character boundary.
    static func truncatedUserAgent(_ value: String) -> String {
        guard value.utf8.count > userAgentLimit else { return value }
        var kept = 0
        var end = value.unicodeScalars.startIndex
        for index in value.unicodeScalars.indices {
            let size = UTF8.width(value.unicodeScalars[index])
            if kept + size > userAgentLimit { break }
            kept += size
            end = value.unicodeScalars.index(after: index)
        }
        return String(value.unicodeScalars[..<end])
    }

    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-26T02:45:32.135Z`.
    static func timestamp(_ date: Date) -> String {
        var line = JSONBytes()
        var clock = JSONBytes.Clock()
        line.appendTimestamp(date, clock: &clock)
        return String(decoding: line.bytes, as: UTF8.self)
    }
}

/// Buffered access-log writer: event loops only append a record under a mutex (never a syscall);
/// a background thread formats and writes batches, and may block in `write` as long as the reader
/// of stdout wants. Queued and in-flight records are bounded in bytes (`capacityBytes`): when the
/// writer falls that far behind (a slow or stalled reader), new lines are dropped and counted
/// instead of growing memory or making traffic wait.
final class AccessLogWriter: Sendable {
    private struct Buffer {
        var lines: [AccessLogRecord] = []
        /// Estimated bytes held: queued records plus the batch being written.
        var bytes = 0
        var running = true
    }
    private let buffer = Mutex(Buffer())
    private let capacityBytes: Int
    private let fileDescriptor: Int32
    private let onDrop: @Sendable (Int) -> Void
    /// Signalled by the writer thread once its last batch is out (`stop`).
    private let stopped = DispatchSemaphore(value: 0)

    init(
        fileDescriptor: Int32 = STDOUT_FILENO, capacityBytes: Int = 4 << 20,
        onDrop: @escaping @Sendable (Int) -> Void = { _ in }
    ) {
        self.fileDescriptor = fileDescriptor
        self.capacityBytes = capacityBytes
        self.onDrop = onDrop
        let thread = Thread { [self] in self.run() }
        thread.name = "gateway-access-log"
        thread.start()
    }

    /// Queues a record; formatting happens on the log thread, so an event loop only appends.
    func log(_ record: AccessLogRecord) {
        let size = record.estimatedBytes
        let queued = self.buffer.withLock { buffer in
            guard buffer.bytes + size <= self.capacityBytes else { return false }
            buffer.bytes += size
            buffer.lines.append(record)
            return true
        }
        // Counted here, not by the writer: a writer stuck on a stalled reader reports nothing.
        if !queued { self.onDrop(1) }
    }

    /// Writes what is queued (the writer thread; tests that own the writer's descriptor).
    func flush() {
        let records = self.buffer.withLock { buffer in
            defer { buffer.lines = [] }
            return buffer.lines
        }
        guard !records.isEmpty else { return }
        var held = 0
        var text = JSONBytes(capacity: records.count * 320)
        var clock = JSONBytes.Clock()
        for record in records {
            held += record.estimatedBytes
            record.writeJSON(into: &text, clock: &clock)
            text.append("\n")
        }
        text.bytes.withUnsafeBufferPointer { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = write(self.fileDescriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { break }
                offset += written
            }
        }
        // Only once written: a batch blocked on a stalled reader still counts against the bound.
        self.buffer.withLock { $0.bytes -= held }
    }

    /// Writes what is left and stops the thread. Waits at most `timeout` for a stalled reader:
    /// shutdown must not hang on a pipe nobody reads.
    func stop(timeout: Double = 2) {
        self.buffer.withLock { $0.running = false }
        _ = self.stopped.wait(timeout: .now() + timeout)
    }

    private func run() {
        while self.buffer.withLock({ $0.running }) {
            usleep(20_000)
            self.flush()
        }
        self.flush()
        self.stopped.signal()
    }
}

extension AccessLogRecord {
    /// Memory a queued record holds, and about the size of its line: the fixed fields plus the
    /// strings that are not stored inline (the path's whole target string is kept alive).
    var estimatedBytes: Int {
        MemoryLayout<AccessLogRecord>.stride + 256 + self.path.base.utf8.count + self.requestID.utf8.count
            + self.route.utf8.count + self.method.utf8.count + self.clientIP.utf8.count
            + (self.host?.utf8.count ?? 0) + (self.userAgent?.utf8.count ?? 0)
    }
}
