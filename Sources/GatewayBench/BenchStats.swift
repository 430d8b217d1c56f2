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
    /// Responses by status code, indexed by the code: an array rather than a dictionary, since
    /// every response of a run is counted here (no hashing on the load generator's hot path).
    private var byStatus = [Int](repeating: 0, count: BenchStats.statusSlots)
    private var unexpectedByStatus = [Int](repeating: 0, count: BenchStats.statusSlots)
    var errorKinds: [BenchErrorKind: Int] = [:]

    /// Three-digit codes (RFC 9110 §15); anything else a server sends is counted as 999.
    private static let statusSlots = 1000

    /// Responses by status code (every status, 2xx included).
    var statusCounts: [Int: Int] { Self.nonzero(self.byStatus) }
    /// Responses whose status the target did not expect, by status code.
    var unexpectedCounts: [Int: Int] { Self.nonzero(self.unexpectedByStatus) }

    private static func nonzero(_ counts: [Int]) -> [Int: Int] {
        var result: [Int: Int] = [:]
        for (status, count) in counts.enumerated() where count > 0 { result[status] = count }
        return result
    }

    private static func slot(_ status: Int) -> Int { (0..<statusSlots).contains(status) ? status : statusSlots - 1 }

    init() {
        self.latency = Self.makeHistogram()
    }

    static func makeHistogram() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: highestTrackableMicros, numberOfSignificantValueDigits: .three)
    }

    var responses: Int { self.byStatus.reduce(0, +) }
    var errors: Int { self.statusErrors + self.errorKinds.values.reduce(0, +) }
    /// Responses with a status the target did not expect (by default: outside 2xx).
    var statusErrors: Int { self.unexpectedByStatus.reduce(0, +) }

    /// A response: its latency is recorded whatever the status (a fast 503 is still a sample).
    mutating func recordResponse(status: Int, latencyMicros: UInt64, expected: Bool? = nil) {
        self.latency.record(min(max(latencyMicros, 1), Self.highestTrackableMicros))
        let slot = Self.slot(status)
        self.byStatus[slot] += 1
        if !(expected ?? (200..<300).contains(status)) { self.unexpectedByStatus[slot] += 1 }
    }

    mutating func recordError(_ kind: BenchErrorKind) {
        self.errorKinds[kind, default: 0] += 1
    }

    mutating func merge(_ other: BenchStats) {
        self.latency.add(other.latency)
        for slot in 0..<Self.statusSlots {
            self.byStatus[slot] += other.byStatus[slot]
            self.unexpectedByStatus[slot] += other.unexpectedByStatus[slot]
        }
        for (kind, count) in other.errorKinds { self.errorKinds[kind, default: 0] += count }
    }

    static func merged(_ parts: [BenchStats]) -> BenchStats {
        var total = BenchStats()
        for part in parts { total.merge(part) }
        return total
    }

    mutating func reset() {
        self.latency.reset()
        for slot in 0..<Self.statusSlots {
            self.byStatus[slot] = 0
            self.unexpectedByStatus[slot] = 0
        }
        self.errorKinds.removeAll(keepingCapacity: true)
    }
}
