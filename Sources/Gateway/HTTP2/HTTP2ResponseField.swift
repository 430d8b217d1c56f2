/// The rule for a response field going out in an HTTP/2 HEADERS frame, applied byte by byte while
/// the field is copied into the connection's header scratch (no `String` is built per field):
/// names are lowercased and must be tokens (so no pseudo-header can be smuggled in) and not
/// connection-specific (RFC 9113 §8.2.2); values lose their leading and trailing SP/HTAB and must
/// not contain control bytes other than HTAB, nor DEL (RFC 9113 §8.2.1). An upstream that breaks
/// these rules would otherwise turn every response into a stream error in nghttp2-based clients.
enum HTTP2ResponseField {
    /// Copies `name` lowercased to `destination` (room for `name.utf8.count` bytes) and returns its
    /// length, or nil when the field must be dropped.
    static func copyName(_ name: String, to destination: UnsafeMutablePointer<UInt8>) -> Int? {
        // The bytes in place: a tight loop, not the UTF-8 view's per-byte checks.
        name.withUTF8Bytes { copyName($0, to: destination) }
    }

    /// `copyName` of a name's bytes.
    static func copyName(_ name: UnsafeBufferPointer<UInt8>, to destination: UnsafeMutablePointer<UInt8>) -> Int? {
        guard !name.isEmpty else { return nil }
        for index in 0..<name.count {
            let byte = name[index]
            guard isHTTPTokenByte(byte) else { return nil }
            destination[index] = byte &+ (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? 0x20 : 0)
        }
        // `connectionSpecific` is `hopByHop` (which lists `proxy-connection`): its byte test.
        if HeaderRewriter.isHopByHop(UnsafeBufferPointer(start: destination, count: name.count)) { return nil }
        return name.count
    }

    /// Copies `name` lowercased, unchecked: for names already known to be tokens that may go out
    /// (an upstream head's, after the rewrite). Returns its length.
    ///
    /// Eight bytes at a time (a response's names are 60-odd bytes, every response): a byte's 0x20
    /// bit is set where its low seven bits are `A`–`Z`, found by two additions on the seven-bit
    /// bytes (no carry crosses a byte). The last word overlaps bytes already copied; a name of four
    /// to seven bytes (`date`, `server`) is two overlapping half-words, a shorter one byte by byte.
    static func copyLowercased(_ name: UnsafeBufferPointer<UInt8>, to destination: UnsafeMutablePointer<UInt8>) -> Int {
        let count = name.count
        guard count >= 4, let base = name.baseAddress else {
            for index in 0..<count {
                let byte = name[index]
                destination[index] = byte | (byte &- UInt8(ascii: "A") < 26 ? 0x20 : 0)
            }
            return count
        }
        let source = UnsafeRawPointer(base), target = UnsafeMutableRawPointer(destination)
        if count < 8 {
            let first = source.loadUnaligned(as: UInt32.self), last = source.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self)
            target.storeBytes(of: UInt32(truncatingIfNeeded: Self.lowercased(UInt64(first))), as: UInt32.self)
            target.storeBytes(of: UInt32(truncatingIfNeeded: Self.lowercased(UInt64(last))), toByteOffset: count - 4, as: UInt32.self)
            return count
        }
        var offset = 0
        while true {
            let word = source.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            target.storeBytes(of: Self.lowercased(word), toByteOffset: offset, as: UInt64.self)
            if offset + 8 >= count { break }
            offset = min(offset + 8, count - 8)
        }
        return count
    }

    @inline(__always)
    static func lowercased(_ word: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let low = word & (ones &* 0x7F)
        // High bit of each byte: low ≥ 0x41 ("A"), and low ≥ 0x5B (past "Z").
        let atLeastA = (low &+ ones &* (0x80 - 0x41)) & (ones &* 0x80)
        let pastZ = (low &+ ones &* (0x80 - 0x5B)) & (ones &* 0x80)
        return word | ((atLeastA & ~pastZ) >> 2)
    }

    /// Copies `value` without its surrounding SP/HTAB to `destination` (room for
    /// `value.utf8.count` bytes) and returns its length, or nil when the field must be dropped.
    static func copyValue(_ value: String, to destination: UnsafeMutablePointer<UInt8>) -> Int? {
        value.withUTF8Bytes { copyValue($0, to: destination) }
    }

    /// `copyValue` of a value's bytes: trimmed, checked eight bytes at a time, copied in one piece.
    static func copyValue(_ value: UnsafeBufferPointer<UInt8>, to destination: UnsafeMutablePointer<UInt8>) -> Int? {
        let trimmed = HeaderRewriter.trimmedFieldValue(value)
        // Field-vchar (obs-text included, as nghttp2 accepts it), SP and HTAB.
        guard RequestValidator.isFieldValue(bytes: trimmed) else { return nil }
        if let base = trimmed.baseAddress, trimmed.count > 0 { destination.update(from: base, count: trimmed.count) }
        return trimmed.count
    }

    /// Whether a (lowercased) field changes from one response to the next, so that HPACK's dynamic
    /// table gains nothing by holding its value: it goes out never indexed, where indexing it would
    /// insert one entry and evict another on every response (but for one response every
    /// `HeaderScratch.changingFieldsReindexInterval`, which keeps its name in the table). Fields
    /// that repeat (`server`, `content-type`, `date` within its second, the CORS and HSTS fields,
    /// `ratelimit-limit`) are indexed and then cost one byte each. nghttp2 itself never indexes `content-length`, `etag`, `set-cookie`,
    /// `age`, `location`, `last-modified`-like conditionals and `:path`.
    static func changesPerResponse(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        switch name.count {
        case 11: bytesEqual(name, "traceparent") || bytesEqual(name, "retry-after")
        case 12: bytesEqual(name, "x-request-id")
        case 13: bytesEqual(name, "last-modified")
        case 15: bytesEqual(name, "ratelimit-reset")
        case 19: bytesEqual(name, "ratelimit-remaining")
        default: false
        }
    }
}
