import Histogram

/// Why a request produced no HTTP response.
public enum BenchErrorKind: String, CaseIterable, Sendable, Codable {
    /// TCP connect or TLS handshake failed (or ALPN did not pick the protocol asked for).
    case connect
    /// No response within `--timeout`, or still in flight when the run's grace period ended.
    case timeout
    /// The connection closed or was reset, or the HTTP/2 stream was reset, before the response ended.
    case reset
}

/// What one event loop (or a merge of several) observed. Latencies are microseconds in an
/// HdrHistogram with a fixed layout, so histograms from every loop merge losslessly.
struct BenchStats: Sendable {
    /// 1 µs to 1 h at 3 significant digits: ~0.1% error at every latency.
    static let highestTrackableMicros: UInt64 = 3_600_000_000

    var latency: Histogram<UInt64>
    /// Responses by status code (every status, 2xx included).
    var statusCounts: [Int: Int] = [:]
    /// Responses whose status the target did not expect, by status code.
    var unexpectedCounts: [Int: Int] = [:]
    var errorKinds: [BenchErrorKind: Int] = [:]

    init() {
        self.latency = Self.makeHistogram()
    }

    static func makeHistogram() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: highestTrackableMicros, numberOfSignificantValueDigits: .three)
    }

    var responses: Int { self.statusCounts.values.reduce(0, +) }
    var errors: Int { self.statusErrors + self.errorKinds.values.reduce(0, +) }
    /// Responses with a status the target did not expect (by default: outside 2xx).
    var statusErrors: Int { self.unexpectedCounts.values.reduce(0, +) }

    /// A response: its latency is recorded whatever the status (a fast 503 is still a sample).
    mutating func recordResponse(status: Int, latencyMicros: UInt64, expected: Bool? = nil) {
        self.latency.record(min(max(latencyMicros, 1), Self.highestTrackableMicros))
        self.statusCounts[status, default: 0] += 1
        if !(expected ?? (200..<300).contains(status)) { self.unexpectedCounts[status, default: 0] += 1 }
    }

    mutating func recordError(_ kind: BenchErrorKind) {
        self.errorKinds[kind, default: 0] += 1
    }

    mutating func merge(_ other: BenchStats) {
        self.latency.add(other.latency)
        for (status, count) in other.statusCounts { self.statusCounts[status, default: 0] += count }
        for (status, count) in other.unexpectedCounts { self.unexpectedCounts[status, default: 0] += count }
        for (kind, count) in other.errorKinds { self.errorKinds[kind, default: 0] += count }
    }

    static func merged(_ parts: [BenchStats]) -> BenchStats {
        var total = BenchStats()
        for part in parts { total.merge(part) }
        return total
    }

    mutating func reset() {
        self.latency.reset()
        self.statusCounts.removeAll(keepingCapacity: true)
        self.unexpectedCounts.removeAll(keepingCapacity: true)
        self.errorKinds.removeAll(keepingCapacity: true)
    }
}
