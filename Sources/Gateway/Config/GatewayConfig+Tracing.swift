import Foundation
internal import Yams

/// `tracing`: OTLP/HTTP export of one span per sampled request. Without `otlp_endpoint` no
/// exporter exists, no trace the gateway starts is sampled and nothing is built per request.
public struct TracingConfig: Sendable, Equatable {
    /// Base URL of an OTLP/HTTP collector (`http://` or `https://`); spans go to `{url}/v1/traces`.
    public let otlpEndpoint: String?
    /// Share of the traces the gateway starts that are sampled (0...1). A continued trace keeps
    /// the caller's sampled flag whatever this says.
    public let sampleRatio: Double
    /// The resource's `service.name`.
    public let serviceName: String
    /// Extra fields on every export request (an API key, a tenant); values are secrets.
    public let headers: [TracingHeader]
    /// How long a span may wait in the queue before a batch goes out.
    public let flushInterval: Duration

    public static let defaults = TracingConfig(
        otlpEndpoint: nil, sampleRatio: 0, serviceName: "barberpro-gateway", headers: [], flushInterval: .seconds(1)
    )
}

/// One `tracing.headers` entry.
public struct TracingHeader: Sendable, Equatable {
    public let name: String
    public let value: ConfigSecret
}

extension GatewayConfig {
    static let tracingKeys = ["otlp_endpoint", "sample_ratio", "service_name", "headers", "flush_interval"]

    /// Fields the exporter writes itself; a configured copy would make the request ambiguous.
    private static let reservedTracingHeaders: Set<String> = [
        "host", "content-type", "content-length", "transfer-encoding", "connection", "user-agent",
    ]

    static func decodeTracing(_ node: Node?, reader r: ConfigReader) -> TracingConfig {
        let defaults = TracingConfig.defaults
        guard let node, let m = r.mapping(node, at: "tracing", keys: tracingKeys) else { return defaults }
        let endpoint = m["otlp_endpoint"].flatMap { node -> String? in
            let path = m.path("otlp_endpoint")
            guard let value = r.nonEmptyString(node, at: path) else { return nil }
            if let reason = OTLPEndpoint.problem(value) {
                r.fail(path, reason)
                return nil
            }
            return value
        }
        let ratio = m["sample_ratio"].flatMap { node -> Double? in
            let path = m.path("sample_ratio")
            guard let text = r.text(node, at: path, expected: "a number between 0 and 1") else { return nil }
            guard let value = Double(text), value.isFinite, (0...1).contains(value) else {
                r.fail(path, "expected a number between 0 and 1, got '\(text)'")
                return nil
            }
            return value
        }
        let serviceName = m["service_name"].flatMap { r.nonEmptyString($0, at: m.path("service_name")) }
        let interval = m["flush_interval"].flatMap {
            r.duration($0, at: m.path("flush_interval"), minimum: .milliseconds(10), maximum: .seconds(60))
        }
        var headers: [TracingHeader] = []
        if let node = m["headers"], let hm = r.mapping(node, at: m.path("headers"), keys: nil) {
            for (name, valueNode) in hm.entries {
                let path = hm.path(name)
                guard !name.isEmpty, name.utf8.allSatisfy(Self.isTokenByte) else {
                    r.fail(path, "a field name may only use letters, digits and !#$%&'*+-.^_`|~")
                    continue
                }
                guard !reservedTracingHeaders.contains(name.lowercased()) else {
                    r.fail(path, "set by the exporter itself, cannot be configured")
                    continue
                }
                // Never quoted in a message: the value is usually a credential.
                guard let value = r.text(valueNode, at: path) else { continue }
                guard value.utf8.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                    r.fail(path, "field values must not contain control characters")
                    continue
                }
                headers.append(TracingHeader(name: name, value: ConfigSecret(value)))
            }
        }
        return TracingConfig(
            otlpEndpoint: endpoint, sampleRatio: ratio ?? defaults.sampleRatio,
            serviceName: serviceName ?? defaults.serviceName, headers: headers,
            flushInterval: interval ?? defaults.flushInterval
        )
    }

    /// RFC 9110 `tchar`.
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default:
            "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }
}
