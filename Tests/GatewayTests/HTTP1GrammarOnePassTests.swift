import NIOHTTP1
import Testing

@testable import Gateway

/// Both head parsers read the usual head in one pass (`HTTP1Grammar.readFieldsToEnd`) and fall
/// back to finding its end first (`headEnd`, then `readFields`) for anything else. The one pass
/// may decline a head the other reads, never read one differently: on the differential tests'
/// generated requests and responses, cut short and with small head limits too, whatever it reads
/// the end-first reading reads the same.
@Suite struct HTTP1GrammarOnePassTests {
    @Test func theOnePassReadsAHeadAsTheEndFirstReadingDoes() {
        var random = SplitMix64(seed: 0x0E_9A55)
        var requests = RequestGenerator(random: SplitMix64(seed: 0x0E_9A56))
        var responses = ResponseGenerator(random: SplitMix64(seed: 0x0E_9A57))
        var read = 0
        var declined = 0
        for index in 0..<6000 {
            var input = index % 2 == 0 ? requests.input() : responses.input()
            if random.chance(1, in: 4) { input = Array(input.prefix(Int.random(in: 0...input.count, using: &random))) }
            let maxHeadBytes = random.chance(1, in: 6) ? Int.random(in: 8...200, using: &random) : 8192
            input.withUnsafeBytes { bytes in
                guard let start = HTTP1Grammar.startLineEnd(bytes, maxHeadBytes: maxHeadBytes) else {
                    declined += 1
                    return
                }
                // The version only gates `Transfer-Encoding`: both readings get the same one.
                for version in [HTTPVersion.http1_1, .http1_0] {
                    guard let onePass = HTTP1Grammar.readFieldsToEnd(bytes, from: start + 2, maxHeadBytes: maxHeadBytes, version: version) else {
                        declined += 1
                        continue
                    }
                    read += 1
                    guard case .found(let length, let lines) = HTTP1Grammar.headEnd(bytes, maxHeadBytes: maxHeadBytes) else {
                        Issue.record("one pass read \(input.count) bytes the end-first reading does not: \(String(decoding: input, as: UTF8.self).debugDescription)")
                        return
                    }
                    #expect(HTTP1Grammar.lineEnd(bytes, from: 0, to: length) == start)
                    #expect(onePass.headLength == length && onePass.lines == lines)
                    #expect(HTTP1Grammar.readFields(bytes, from: start + 2, headLength: length, version: version) == onePass.fields)
                }
            }
        }
        // Both outcomes are reached (a test of the test).
        #expect(read > 1000 && declined > 1000, "read \(read), declined \(declined)")
    }
}
