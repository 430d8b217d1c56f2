#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Byte comparisons of field names and list tokens that ignore ASCII case, so the request path
/// never builds a lowercased `String` to look a header up.
extension String {
    /// Whether this equals `lowercase` (a lowercase ASCII name or token), ASCII case ignored.
    func equalsIgnoringASCIICase(_ lowercase: StaticString) -> Bool {
        guard self.utf8.count == lowercase.utf8CodeUnitCount else { return false }
        let expected = UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount)
        // Native strings (all the decoders make) are contiguous UTF-8: compared as a buffer.
        if let equal = self.utf8.withContiguousStorageIfAvailable({ bytesEqualIgnoringASCIICase($0, expected) }) {
            return equal
        }
        var index = 0
        for byte in self.utf8 {
            if asciiLowercased(byte) != expected[index] { return false }
            index += 1
        }
        return true
    }

    /// `equalsIgnoringASCIICase` against a lowercase name known only at run time (config).
    func equalsIgnoringASCIICase(_ lowercase: String) -> Bool {
        guard self.utf8.count == lowercase.utf8.count else { return false }
        if let equal = self.utf8.withContiguousStorageIfAvailable({ bytes in
            lowercase.utf8.withContiguousStorageIfAvailable { bytesEqualIgnoringASCIICase(bytes, $0) }
        }), let equal {
            return equal
        }
        var expected = lowercase.utf8.makeIterator()
        for byte in self.utf8 where asciiLowercased(byte) != expected.next() {
            return false
        }
        return true
    }

    /// Whether this equals `other`, ASCII case ignored on both sides (two names neither of which
    /// is known to be lowercase, such as a gateway field and an upstream's).
    func equalsIgnoringASCIICase(anyCase other: String) -> Bool {
        guard self.utf8.count == other.utf8.count else { return false }
        var (mine, theirs) = (self.utf8.makeIterator(), other.utf8.makeIterator())
        while let byte = mine.next() {
            guard let their = theirs.next(), asciiLowercased(byte) == asciiLowercased(their) else { return false }
        }
        return true
    }

    /// Whether this comma-separated list (a field value such as `Connection` or `Expect`) has an
    /// element equal to `lowercase`, elements trimmed of SP/HTAB and compared ignoring ASCII case.
    func containsListElement(_ lowercase: StaticString) -> Bool {
        !self.visitListElements { !bytesEqualIgnoringASCIICase($0, lowercase) }
    }

    /// Whether every element of this comma-separated list (empty ones aside) is one of
    /// `lowercaseNames`, elements trimmed of SP/HTAB and compared ignoring ASCII case.
    func listElementsAreAll(in lowercaseNames: [StaticString]) -> Bool {
        self.visitListElements { element in
            element.isEmpty || lowercaseNames.contains { bytesEqualIgnoringASCIICase(element, $0) }
        }
    }

    /// Calls `visit` with each element of this comma-separated list, trimmed of SP/HTAB (empty
    /// ones included), while it returns true; true when it saw them all.
    private func visitListElements(_ visit: (UnsafeBufferPointer<UInt8>) -> Bool) -> Bool {
        self.withUTF8Bytes { visitCommaSeparated($0, visit) }
    }
}

/// Calls `visit` with each element of the comma-separated list `bytes`, trimmed of SP/HTAB (empty
/// ones included), while it returns true; true when it saw them all.
func visitCommaSeparated(_ bytes: UnsafeBufferPointer<UInt8>, _ visit: (UnsafeBufferPointer<UInt8>) -> Bool) -> Bool {
    var start = 0
    while start <= bytes.count {
        var end = start
        while end < bytes.count, bytes[end] != UInt8(ascii: ",") { end += 1 }
        var low = start
        var high = end
        while low < high, isSpaceOrTab(bytes[low]) { low += 1 }
        while high > low, isSpaceOrTab(bytes[high - 1]) { high -= 1 }
        if !visit(UnsafeBufferPointer(rebasing: bytes[low..<high])) { return false }
        start = end + 1
    }
    return true
}

@inline(__always)
func bytesEqualIgnoringASCIICase(_ bytes: UnsafeBufferPointer<UInt8>, _ lowercase: StaticString) -> Bool {
    bytesEqualIgnoringASCIICase(bytes, UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount))
}

/// `bytes` equal to `lowercase` (lowercase ASCII) with `bytes`' ASCII case ignored.
@inline(__always)
private func bytesEqualIgnoringASCIICase(_ bytes: UnsafeBufferPointer<UInt8>, _ lowercase: UnsafeBufferPointer<UInt8>) -> Bool {
    guard bytes.count == lowercase.count else { return false }
    for index in 0..<bytes.count where asciiLowercased(bytes[index]) != lowercase[index] { return false }
    return true
}

extension String {
    /// The string's UTF-8 in place. Calling the mutating `withUTF8` on a `var` copy costs a
    /// retain/release pair per call (measured: ~60 per HTTP/2 request when every field write
    /// did it); a native string's bytes are read where they are, and only a bridged one is copied.
    @inline(__always)
    func withUTF8Bytes<R>(_ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R {
        if let result = try self.utf8.withContiguousStorageIfAvailable(body) { return result }
        var copy = self
        return try copy.withUTF8(body)
    }
}

extension Substring {
    /// `String.withUTF8Bytes` for a slice.
    @inline(__always)
    func withUTF8Bytes<R>(_ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R {
        if let result = try self.utf8.withContiguousStorageIfAvailable(body) { return result }
        var copy = self
        return try copy.withUTF8(body)
    }
}

/// `bytes` begin with `prefix`, byte for byte.
func bytesHavePrefix(_ bytes: UnsafeBufferPointer<UInt8>, _ prefix: StaticString) -> Bool {
    guard bytes.count >= prefix.utf8CodeUnitCount else { return false }
    for index in 0..<prefix.utf8CodeUnitCount where bytes[index] != prefix.utf8Start[index] { return false }
    return true
}

/// `bytes` equal to `string`, byte for byte (`memcmp`: a few instructions where a byte loop took
/// five per byte).
func bytesEqual(_ bytes: UnsafeBufferPointer<UInt8>, _ string: StaticString) -> Bool {
    guard bytes.count == string.utf8CodeUnitCount else { return false }
    guard let base = bytes.baseAddress else { return true }
    return memcmp(base, string.utf8Start, bytes.count) == 0
}

/// `token`, a field name already checked to be a token, equal to `lowercase` (lowercase letters,
/// digits and `-` only), ASCII case ignored: eight bytes at a time (overlapping at the end; two
/// half-words for four to seven bytes), 0x20 ORed into every byte. For a token byte that maps only
/// `A`–`Z` onto what they stand for: the other bytes that would land on `-` or a digit are
/// control bytes, never in a token. The names the parsers look for are compared on every field of
/// every head, where the byte loop took six instructions a byte.
@inline(__always)
func tokenEqualsIgnoringASCIICase(_ token: UnsafeBufferPointer<UInt8>, _ lowercase: StaticString) -> Bool {
    let count = lowercase.utf8CodeUnitCount
    guard token.count == count else { return false }
    guard count >= 4, let base = token.baseAddress else {
        for index in 0..<count where token[index] | 0x20 != lowercase.utf8Start[index] { return false }
        return true
    }
    let name = UnsafeRawPointer(base), literal = UnsafeRawPointer(lowercase.utf8Start)
    if count < 8 {
        let first = name.loadUnaligned(as: UInt32.self) | 0x2020_2020
        let last = name.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self) | 0x2020_2020
        return first == literal.loadUnaligned(as: UInt32.self) && last == literal.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self)
    }
    var offset = 0
    while true {
        let word = name.loadUnaligned(fromByteOffset: offset, as: UInt64.self) | 0x2020_2020_2020_2020
        if word != literal.loadUnaligned(fromByteOffset: offset, as: UInt64.self) { return false }
        if offset + 8 >= count { return true }
        offset = offset + 16 <= count ? offset + 8 : count - 8
    }
}

/// `a` equal to `b`, ASCII case ignored on both sides.
func bytesEqualIgnoringASCIICase(anyCase a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
    guard a.count == b.count else { return false }
    for index in 0..<a.count where asciiLowercased(a[index]) != asciiLowercased(b[index]) { return false }
    return true
}

@inline(__always)
private func asciiLowercased(_ byte: UInt8) -> UInt8 {
    byte &- UInt8(ascii: "A") < 26 ? byte | 0x20 : byte
}

@inline(__always)
private func isSpaceOrTab(_ byte: UInt8) -> Bool {
    byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
}

/// `a` and `b` hold the same bytes (`memcmp`, as for a `StaticString`).
func bytesEqual(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
    guard a.count == b.count else { return false }
    guard let left = a.baseAddress, let right = b.baseAddress else { return true }
    return memcmp(left, right, a.count) == 0
}

/// A few field names asked about for every field of every request (the config's removed headers:
/// claim headers, `client_ip.header`, `authorization`). A mask of the names' lengths turns most
/// fields away without a comparison; the others are compared as bytes, ASCII case ignored. (As a
/// `Set<String>`, each field walked the set's buckets and counted a reference per name.)
struct FieldNameSet: ExpressibleByArrayLiteral, Sendable {
    /// Lowercased, each once.
    private(set) var names: [String] = []
    /// Bit `n` for a name of `n` bytes (63 for any longer).
    private var lengths: UInt64 = 0

    init<Names: Sequence>(_ names: Names) where Names.Element == String {
        for name in names { self.insert(name) }
    }

    init(arrayLiteral names: String...) {
        self.init(names)
    }

    mutating func insert(_ name: String) {
        let lowered = name.lowercased()
        guard !self.names.contains(lowered) else { return }
        self.names.append(lowered)
        self.lengths |= Self.bit(lowered.utf8.count)
    }

    func union<Names: Sequence>(_ names: Names) -> FieldNameSet where Names.Element == String {
        var union = self
        for name in names { union.insert(name) }
        return union
    }

    func contains(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        guard self.lengths & Self.bit(name.count) != 0 else { return false }
        for listed in self.names where listed.withUTF8Bytes({ bytesEqualIgnoringASCIICase(anyCase: name, $0) }) { return true }
        return false
    }

    func contains(_ name: String) -> Bool {
        name.withUTF8Bytes { self.contains($0) }
    }

    private static func bit(_ length: Int) -> UInt64 { 1 << UInt64(min(length, 63)) }
}
