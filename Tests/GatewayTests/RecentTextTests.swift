import Testing

@testable import Gateway

/// A connection's host and target text is reused while the bytes repeat (`RecentText`): whatever
/// it hands out must be the text of the bytes given, whether it came from the cache or not.
@Suite struct RecentTextTests {
    @Test func everyTextIsTheTextOfItsBytes() {
        var random = SplitMix64(seed: 0x7E_C3E7)
        var recent = RecentText()
        // Short alphabets and lengths, so that equal lengths and repeats are frequent; invalid
        // UTF-8 too (the text is then the repaired decoding, the same as without the cache).
        let alphabet: [UInt8] = Array("ab/?=.".utf8) + [0xC3, 0xA9, 0xFF]
        var reused = 0
        var previous: [UInt8] = []
        for _ in 0..<20_000 {
            let count = random.chance(1, in: 50) ? Int.random(in: 200...300, using: &random) : Int.random(in: 0...4, using: &random)
            let bytes = (0..<count).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &random)] }
            if bytes == previous { reused += 1 }
            let text = bytes.withUnsafeBytes { recent.text(for: $0) }
            #expect(text == String(decoding: bytes, as: UTF8.self), "\(bytes)")
            previous = bytes
        }
        #expect(reused > 500)  // the cache's path was taken, not only the decoding's
    }

    @Test func aRepeatedValueIsTheSameTextAndAChangedOneIsNew() {
        var recent = RecentText()
        let first = Array("/api/bookings?page=1".utf8).withUnsafeBytes { recent.text(for: $0) }
        let again = Array("/api/bookings?page=1".utf8).withUnsafeBytes { recent.text(for: $0) }
        let changed = Array("/api/bookings?page=2".utf8).withUnsafeBytes { recent.text(for: $0) }
        let back = Array("/api/bookings?page=1".utf8).withUnsafeBytes { recent.text(for: $0) }
        #expect(first == "/api/bookings?page=1" && again == first && back == first)
        #expect(changed == "/api/bookings?page=2")
        // A value past `maxBytes` is handed out but not kept.
        let long = String(repeating: "x", count: RecentText.maxBytes + 1)
        #expect(Array(long.utf8).withUnsafeBytes { recent.text(for: $0) } == long)
        #expect(Array("".utf8).withUnsafeBytes { recent.text(for: $0) } == "")
        #expect(Array("/api/bookings?page=2".utf8).withUnsafeBytes { recent.text(for: $0) } == "/api/bookings?page=2")
    }
}
