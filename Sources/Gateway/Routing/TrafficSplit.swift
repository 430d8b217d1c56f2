import NIOHTTP1
import Synchronization

/// A route's weighted split over several upstreams (blue-green, canary).
///
/// Every request maps to a bucket in `0..<10_000` and the buckets are laid out by cumulative
/// weight: with `blue: 90, green: 10`, buckets `0..<9000` go to blue and `9000..<10000` to green.
/// With a `split_key` the bucket is a hash of the key (FNV-1a 64 then the SplitMix64 finaliser:
/// no per-process seed, so every gateway instance puts a user in the same bucket). A weight change
/// only moves the boundaries: going from 90/10 to 80/20 moves exactly the users in `8000..<9000`
/// from blue to green and nobody else, which is the least any split can move. With three or more
/// upstreams, changing one weight also shifts the boundaries of the entries listed after it.
/// Without a key (or when the request has none, e.g. no cookie yet) a per-split golden-ratio
/// sequence spreads requests over the buckets, so the shares hold even over a few hundred requests.
///
/// Weights can be replaced at run time (`PUT /routes/NAME/split` on the admin listener); the
/// object belongs to one config snapshot, so a reload starts again from the file's weights.
final class TrafficSplit: Sendable {
    static let buckets = 10_000

    let routeName: String
    /// Upstream names, in the order of the split.
    let upstreams: [String]
    let key: SplitKey?
    /// For `claim:NAME` other than `sub`: the header `jwt.forward_claims` puts that claim in.
    private let claimHeader: String?
    private let weights: Mutex<[Int]>
    private let sequence = Atomic<UInt64>(0)
    /// `gateway_split_requests_total{route, upstream}`.
    private let chosen: LabeledCounter?

    init(routeName: String, config: RouteSplitConfig, forwardClaims: [ForwardedClaim] = [], chosen: LabeledCounter? = nil) {
        self.routeName = routeName
        if case .claim(let claim) = config.key, claim != "sub" {
            self.claimHeader = forwardClaims.first { $0.claim == claim }?.header
        } else {
            self.claimHeader = nil
        }
        self.upstreams = config.entries.map(\.upstream)
        self.key = config.key
        self.weights = Mutex(config.entries.map(\.weight))
        self.chosen = chosen
    }

    var currentWeights: [Int] { self.weights.withLock { $0 } }

    /// Replaces the weights (same upstreams, same order). Refuses a set whose sum is 0.
    func setWeights(_ weights: [Int]) -> Bool {
        guard weights.count == self.upstreams.count, weights.allSatisfy({ (0...Self.buckets).contains($0) }),
            weights.contains(where: { $0 > 0 })
        else { return false }
        self.weights.withLock { $0 = weights }
        return true
    }

    /// The upstream for one request, counted in the split metric.
    func choose(clientIP: String, subject: String?, claimHeaders: [(String, String)] = [], headers: HeadFields) -> String {
        var keyValue: Substring?
        switch self.key {
        case .clientIP: keyValue = Substring(clientIP)
        case .claim(let claim) where claim == "sub": keyValue = subject.map { Substring($0) }
        case .claim: keyValue = claimHeaders.first { $0.0 == self.claimHeader }.map { Substring($0.1) }
        case .cookie(let name): keyValue = RequestCondition.cookie(named: name, in: headers)
        case nil: keyValue = nil
        }
        let bucket: Int
        if let keyValue, !keyValue.isEmpty {
            bucket = Self.bucket(forKey: keyValue)
        } else {
            bucket = Self.bucket(sequence: self.sequence.add(1, ordering: .relaxed).oldValue)
        }
        let upstream = self.upstreams[Self.pick(bucket: bucket, weights: self.currentWeights)]
        self.chosen?.increment([self.routeName, upstream])
        return upstream
    }

    /// The entry whose cumulative-weight range holds `bucket`.
    static func pick(bucket: Int, weights: [Int]) -> Int {
        let total = weights.reduce(0, +)
        guard total > 0 else { return 0 }
        var cumulative = 0
        for (index, weight) in weights.enumerated() {
            cumulative += weight
            // bucket / buckets < cumulative / total, in integers.
            if bucket * total < cumulative * Self.buckets { return index }
        }
        return weights.count - 1
    }

    static func bucket(forKey key: Substring) -> Int {
        var hash: UInt64 = 14_695_981_039_346_656_037
        for byte in key.utf8 { hash = (hash ^ UInt64(byte)) &* 1_099_511_628_211 }
        // FNV-1a's low bits are weak for short similar keys; the finaliser spreads every input bit.
        hash = (hash ^ (hash >> 30)) &* 0xbf58_476d_1ce4_e5b9
        hash = (hash ^ (hash >> 27)) &* 0x94d0_49bb_1331_11eb
        hash ^= hash >> 31
        return Int(((hash >> 32) &* UInt64(Self.buckets)) >> 32)
    }

    /// The n-th point of the golden-ratio (Weyl) sequence: consecutive requests land far apart
    /// and any window of them covers the buckets almost evenly.
    static func bucket(sequence n: UInt64) -> Int {
        let point = n &* 0x9e37_79b9_7f4a_7c15
        return Int(((point >> 32) &* UInt64(Self.buckets)) >> 32)
    }
}
