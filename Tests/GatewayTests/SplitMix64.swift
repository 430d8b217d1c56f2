import Foundation

/// SplitMix64: a small seedable generator, so generated test cases are the same on every run and
/// platform.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The loop of a differential fuzz test: `FUZZ_CASES` cases (or `defaultCases`) from `FUZZ_SEED`
/// (or `defaultSeed`), each fed in pieces split at random points, and every 97th at every single
/// split point. `check` runs one feeding and says whether the parser under test accepted the input
/// (true), refused it (false) or neither (nil); the counts come back so a test can check that its
/// generator reaches both sides of the grammar.
enum DifferentialFuzz {
    static func run<Extra>(
        defaultSeed: UInt64, defaultCases: Int, generate: (inout SplitMix64) -> (input: [UInt8], extra: Extra),
        check: (_ input: [UInt8], _ extra: Extra, _ splits: [Int], _ label: String) throws -> Bool?
    ) rethrows -> (cases: Int, accepted: Int, refused: Int) {
        let environment = ProcessInfo.processInfo.environment
        let cases = environment["FUZZ_CASES"].flatMap(Int.init) ?? defaultCases
        let seed = environment["FUZZ_SEED"].flatMap(UInt64.init) ?? defaultSeed
        var random = SplitMix64(seed: seed)
        var accepted = 0
        var refused = 0
        for number in 0..<cases {
            let (input, extra) = generate(&random)
            var splits: [Int] = []
            for _ in 0..<Int.random(in: 0...3, using: &random) where !input.isEmpty {
                splits.append(Int.random(in: 0...input.count, using: &random))
            }
            switch try check(input, extra, splits.sorted(), "case \(number) seed \(seed)") {
            case true?: accepted += 1
            case false?: refused += 1
            case nil: break
            }
            if number % 97 == 0 {
                for cut in 0...input.count {
                    _ = try check(input, extra, [cut], "case \(number) cut \(cut)")
                }
            }
        }
        return (cases, accepted, refused)
    }
}
