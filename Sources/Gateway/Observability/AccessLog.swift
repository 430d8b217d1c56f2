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

    /// One JSON object, no trailing newline.
    func json() -> String {
        var out = "{\"time\":\"" + AccessLogRecord.timestamp(self.time) + "\""
        func field(_ name: String, _ value: String?) {
            guard let value else { return }
            out += ",\"\(name)\":\"" + JSON.escaped(value) + "\""
        }
        func number(_ name: String, _ value: Double?) {
            guard let value else { return }
            out += ",\"\(name)\":" + String(format: "%.6f", value)
        }
        field("request_id", self.requestID)
        field("client_ip", self.clientIP)
        field("method", self.method)
        field("route", self.route)
        field("path", String(self.path))
        out += ",\"status\":\(self.status),\"bytes_in\":\(self.bytesIn),\"bytes_out\":\(self.bytesOut)"
        number("duration_s", self.durationSeconds)
        number("upstream_s", self.upstreamSeconds)
        field("protocol", self.protocolName)
        field("tls_version", self.tlsVersion)
        field("rate_limit", self.rateLimit)
        field("subject_hash", self.subjectHash)
        field("upstream", self.upstreamEndpoint)
        return out + "}"
    }

    static func timestamp(_ date: Date) -> String {
        let seconds = date.timeIntervalSince1970
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        let millis = Int((seconds - Double(t)) * 1000)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
            Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), millis
        )
    }
}

/// Buffered access-log writer: event loops only append a line under a mutex (never a syscall);
/// a background thread writes batches. When the writer falls behind by `capacity` lines, new
/// lines are dropped and counted instead of blocking traffic.
final class AccessLogWriter: Sendable {
    private struct Buffer {
        var lines: [String] = []
        var dropped = 0
        var running = true
    }
    private let buffer = Mutex(Buffer())
    private let capacity: Int
    private let fileDescriptor: Int32
    private let onDrop: @Sendable (Int) -> Void

    init(fileDescriptor: Int32 = STDOUT_FILENO, capacity: Int = 65_536, onDrop: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.fileDescriptor = fileDescriptor
        self.capacity = capacity
        self.onDrop = onDrop
        let thread = Thread { [self] in self.run() }
        thread.name = "gateway-access-log"
        thread.start()
    }

    func log(_ record: AccessLogRecord) {
        let line = record.json()
        self.buffer.withLock { buffer in
            if buffer.lines.count >= self.capacity {
                buffer.dropped += 1
            } else {
                buffer.lines.append(line)
            }
        }
    }

    /// Writes what is buffered now (tests, shutdown).
    func flush() {
        let (lines, dropped) = self.buffer.withLock { buffer -> ([String], Int) in
            defer {
                buffer.lines.removeAll(keepingCapacity: true)
                buffer.dropped = 0
            }
            return (buffer.lines, buffer.dropped)
        }
        if dropped > 0 { self.onDrop(dropped) }
        guard !lines.isEmpty else { return }
        var text = lines.joined(separator: "\n")
        text += "\n"
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = write(self.fileDescriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written <= 0 { break }
                offset += written
            }
        }
    }

    func stop() {
        self.buffer.withLock { $0.running = false }
        self.flush()
    }

    private func run() {
        while self.buffer.withLock({ $0.running }) {
            usleep(20_000)
            self.flush()
        }
    }
}
