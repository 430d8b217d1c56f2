import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
private import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

/// What one request leaves behind for the log + metrics phase: made once by `RequestDispatch`
/// with what the pipeline decided, then filled in by the codec as the response goes out.
/// The method and version are kept as they were parsed, not as text: every field that is a
/// `String` is a reference to count each time a record is made, moved or dropped.
struct RequestRecord: ~Copyable {
    var start: NIODeadline
    var requestID: String
    var method: HTTPMethod
    var target: String
    var version: HTTPVersion
    var route: String = "-"
    /// The route's metrics (nil: counted by `route`'s name).
    var series: RouteSeries?
    var clientIP: String = "unknown"
    var status = 0
    var bytesIn = 0
    var bytesOut = 0
    var jwtRejection: String?
    var subject: String?
    var upstreamSeconds: Double?
    var upstreamEndpoint: String?
    var rateLimit: String?
    /// Why the response happened; nil until a response or an exchange's outcome is known.
    var source: ResponseSource?
    /// The `Host` / `:authority` the client sent.
    var host: String?
    /// The request's fields as the client's bytes, read only when an access-log line is written
    /// (its `user_agent`): a `String` made per request for a log that may be off would cost an
    /// allocation for every browser's long `User-Agent`.
    var requestFields: HeadFields?
    /// The upstream's response status, when one came (it can differ from `status`: a 101 becomes 502).
    var upstreamStatus: Int?
    var trace: TraceContext?
    /// Set once the record has been handed to `Observability.finished`.
    var logged = false

    init(
        start: NIODeadline = .now(), method: HTTPMethod, target: String, version: HTTPVersion, requestID: String = "",
        requestFields: HeadFields? = nil
    ) {
        self.start = start
        self.method = method
        self.target = target
        self.version = version
        self.requestID = requestID
        self.requestFields = requestFields
    }

    /// What the pipeline decided about `head` (`RequestDispatch`), before any response.
    init(
        start: NIODeadline, head: RequestHead, requestID: String, trace: TraceContext, host: String? = nil, route: String = "-",
        clientIP: String = "unknown", jwtRejection: String? = nil, subject: String? = nil
    ) {
        self.start = start
        self.method = head.method
        self.target = head.uri
        self.version = head.version
        self.requestFields = head.headers
        self.requestID = requestID
        self.trace = trace
        self.host = host
        self.route = route
        self.clientIP = clientIP
        self.jwtRejection = jwtRejection
        self.subject = subject
    }

    /// For a request whose head could not be read: it is logged with `-` for its method and target.
    static func unparsed(version: HTTPVersion, requestID: String) -> RequestRecord {
        RequestRecord(method: .RAW(value: "-"), target: "-", version: version, requestID: requestID)
    }

    /// `protocol` of the access log and of `gateway_requests_total`.
    var protocolName: String { ProtocolLabel(self.version).name }

    mutating func note(_ exchange: RequestExchange) {
        self.upstreamSeconds = exchange.upstream.seconds
        self.upstreamEndpoint = exchange.upstream.endpointKey
        self.rateLimit = exchange.rateLimitDecision
        self.upstreamStatus = exchange.upstream.status
        if let source = exchange.source { self.source = source }
    }

    /// Before logging, once the codec knows whether the response reached the client whole: a
    /// request cut off before any response counts as 499 (client closed), as nginx logs it, and a
    /// response cut short is `gateway:client_abort` unless the upstream broke it off.
    mutating func settle(responseComplete: Bool, exchange: RequestExchange?) {
        if let exchange { self.note(exchange) }
        if !responseComplete && self.status == 0 { self.status = 499 }
        self.source = ResponseSource.settled(self.source, responseComplete: responseComplete)
    }

    /// The path without its query string: query strings may carry personal data.
    var path: Substring {
        self.target.utf8.firstIndex(of: UInt8(ascii: "?")).map { self.target[..<$0] } ?? Substring(self.target)
    }
}

/// The last phase of every request, HTTP/1.1 or HTTP/2, proxied or answered locally: metrics
/// and one access-log line. Outlives config reloads.
final class Observability: Sendable {
    let metrics: GatewayMetrics
    let accessLog: AccessLogWriter?
    /// Key for subject hashes: logs can correlate one user's requests without naming the user.
    private let subjectKey: [UInt8]

    /// Receives a span per sampled request: `OTLPExporter` when `tracing.otlp_endpoint` is set, or
    /// one handed in (tests); nil (the default): no span is built.
    let spanExporter: SpanExporter?

    init(accessLog: Bool, spanExporter: SpanExporter? = nil, tracing: TracingConfig = .defaults) {
        let metrics = GatewayMetrics()
        self.metrics = metrics
        self.spanExporter = spanExporter ?? OTLPExporter.make(tracing, metrics: metrics)
        self.accessLog = accessLog ? AccessLogWriter(onDrop: { metrics.accessLogDropped.increment([], by: Double($0)) }) : nil
        var generator = SystemRandomNumberGenerator()
        self.subjectKey = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// Whether a trace the gateway starts is sampled: only when an exporter wants it.
    var samplesNewTraces: Bool { self.spanExporter?.samplesNewTrace() ?? false }

    func finished(_ record: borrowing RequestRecord, tlsVersion: String?) {
        let upstreamSeconds = record.upstreamSeconds, upstreamEndpoint = record.upstreamEndpoint
        let elapsed = (NIODeadline.now() - record.start).nanoseconds
        let seconds = Double(elapsed) / 1e9
        let source = record.source ?? .clientAbort
        self.metrics.recordRequest(
            route: record.route, series: record.series, method: record.method, status: record.status, version: record.version,
            source: source, seconds: seconds, upstreamSeconds: upstreamSeconds
        )
        if let reason = record.jwtRejection { self.metrics.jwtRejections.increment([reason]) }
        // The trace first: binding the exporter copies an existential, on every request.
        if let trace = record.trace, trace.sampled, let exporter = self.spanExporter {
            let end = UInt64(max(0, Date().timeIntervalSince1970 * 1e9))
            exporter.export(FinishedSpan(
                trace: trace, name: record.route, startNanoseconds: end - min(end, UInt64(max(0, elapsed))),
                endNanoseconds: end, method: record.method.rawValue, status: record.status, source: source,
                upstreamEndpoint: upstreamEndpoint, path: String(record.path), host: record.host, clientIP: record.clientIP
            ))
        }
        guard let accessLog = self.accessLog else { return }
        var line = AccessLogRecord(
            time: Date(), requestID: record.requestID, clientIP: record.clientIP, method: record.method.rawValue,
            route: record.route, path: record.path, status: record.status, bytesIn: record.bytesIn,
            bytesOut: record.bytesOut, durationSeconds: seconds, upstreamSeconds: upstreamSeconds,
            protocolName: record.protocolName, tlsVersion: tlsVersion, rateLimit: record.rateLimit,
            subjectHash: record.subject.map(self.hashSubject), upstreamEndpoint: upstreamEndpoint
        )
        line.source = source
        line.host = record.host
        line.userAgent = record.requestFields?.first(name: "user-agent")
        line.upstreamStatus = record.upstreamStatus
        line.trace = record.trace
        accessLog.log(line)
    }

    /// HMAC-SHA256 under a per-process key, first 16 hex digits.
    func hashSubject(_ subject: String) -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let bytes = Array(subject.utf8)
        _ = self.subjectKey.withUnsafeBufferPointer { key in
            HMAC(EVP_sha256(), key.baseAddress, Int32(key.count), bytes, bytes.count, &digest, &length)
        }
        return digest.prefix(8).map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    }
}

/// Operator messages (start-up, reloads, drains, warnings) through swift-log, on stderr: the
/// access log owns stdout and keeps its own off-loop writer. `log.level` / `--log-level` filter;
/// `log.format` picks plain lines (`gateway: message`, the level named when it is not info) or
/// one JSON object per line. The level can change on reload; `--log-level` pins it.
public enum OperatorLog {
    private static let level = Atomic<UInt8>(UInt8(Logger.Level.info.index))
    private static let json = Atomic<Bool>(false)
    private static let pinned = Atomic<Bool>(false)

    /// The process-wide logger every gateway component writes operator messages to.
    public static let logger = Logger(label: "gateway")

    /// Installs the handler once per process (swift-log allows only one bootstrap).
    public static func bootstrap(level: OperatorLogLevel, format: OperatorLogFormat, pinLevel: Bool) {
        Self.configure(level: level, format: format)
        Self.pinned.store(pinLevel, ordering: .relaxed)
        LoggingSystem.bootstrap { label in OperatorLogHandler(label: label) }
    }

    /// Applies a (re)loaded config's `log` section; a `--log-level` given on the command line wins.
    public static func configure(level: OperatorLogLevel, format: OperatorLogFormat) {
        if !Self.pinned.load(ordering: .relaxed) {
            Self.level.store(UInt8(Logger.Level(level).index), ordering: .relaxed)
        }
        Self.json.store(format == .json, ordering: .relaxed)
    }

    static var currentLevel: Logger.Level { Logger.Level.allCases[Int(Self.level.load(ordering: .relaxed))] }
    static var writesJSON: Bool { Self.json.load(ordering: .relaxed) }
}

extension Logger.Level {
    init(_ level: OperatorLogLevel) {
        self = Logger.Level(rawValue: level.rawValue) ?? .info
    }

    fileprivate var index: Int { Logger.Level.allCases.firstIndex(of: self) ?? 2 }
}

/// Writes one line per message straight to stderr (operator messages are rare; a blocked stderr
/// must not hold a lock other threads wait on, so each line is a single `write`).
struct OperatorLogHandler: LogHandler {
    let label: String
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level {
        get { OperatorLog.currentLevel }
        set {}
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields = self.metadata
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        let line: String
        if OperatorLog.writesJSON {
            var out = "{\"time\":\"\(AccessLogRecord.timestamp(Date()))\",\"level\":\"\(event.level.rawValue)\","
                + "\"logger\":\"\(JSON.escaped(self.label))\",\"message\":\"\(JSON.escaped("\(event.message)"))\""
            for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
                out += ",\"\(JSON.escaped(key))\":\"\(JSON.escaped("\(value)"))\""
            }
            line = out + "}\n"
        } else {
            let level = event.level == .info ? "" : "\(event.level.rawValue): "
            let suffix = fields.sorted(by: { $0.key < $1.key }).map { " \($0.key)=\($0.value)" }.joined()
            line = "gateway: \(level)\(event.message)\(suffix)\n"
        }
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(2, buffer.baseAddress! + offset, buffer.count - offset)
                if written <= 0 { if errno == EINTR { continue }; return }
                offset += written
            }
        }
    }
}
