import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// JSON text as bytes, appended in place: no `String` per field, number or digit. The access log's
/// lines are written with it, and `JSON`'s escaping for the gateway's own bodies goes through it.
struct JSONBytes {
    private(set) var bytes: [UInt8] = []

    init(capacity: Int = 384) { self.bytes.reserveCapacity(capacity) }

    /// The `YYYY-MM-DDTHH:MM:SS.` of the second last formatted: a batch's lines mostly share it,
    /// so `gmtime_r` runs once per second, not once per line.
    struct Clock {
        fileprivate var second: time_t?
        fileprivate var prefix: [UInt8] = []
        init() {}
    }

    mutating func append(_ string: StaticString) {
        self.bytes.append(contentsOf: UnsafeBufferPointer(start: string.utf8Start, count: string.utf8CodeUnitCount))
    }

    mutating func append(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes.append(contentsOf: bytes)
    }

    /// JSON string escaping; bytes that need none (the usual case) are copied as they are.
    mutating func appendEscaped(_ value: UnsafeBufferPointer<UInt8>) {
        if !value.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            self.bytes.append(contentsOf: value)
            return
        }
        for byte in value {
            switch byte {
            case UInt8(ascii: "\""): self.append("\\\"")
            case UInt8(ascii: "\\"): self.append("\\\\")
            case 0x0A: self.append("\\n")
            case 0x0D: self.append("\\r")
            case 0x09: self.append("\\t")
            case 0..<0x20:
                self.append("\\u00")
                self.bytes.append(Self.hexDigit(byte >> 4))
                self.bytes.append(Self.hexDigit(byte & 0xF))
            default: self.bytes.append(byte)
            }
        }
    }

    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
    }

    mutating func appendDecimal(_ value: Int) {
        if value < 0 {
            self.bytes.append(UInt8(ascii: "-"))
            self.appendDigits(value.magnitude, width: 1)
        } else {
            self.appendDigits(UInt(value), width: 1)
        }
    }

    /// `value` in decimal, zero-padded to at least `width` digits.
    mutating func appendDigits(_ value: UInt, width: Int) {
        var digits = 1
        var divisor: UInt = 1
        while value / divisor >= 10 {
            divisor *= 10
            digits += 1
        }
        for _ in digits..<max(digits, width) { self.bytes.append(UInt8(ascii: "0")) }
        while divisor > 0 {
            self.bytes.append(UInt8(ascii: "0") + UInt8(value / divisor % 10))
            divisor /= 10
        }
    }

    /// Seconds with microsecond resolution, e.g. `0.000420`, without Foundation's formatter.
    /// Durations come from a monotonic clock; a negative one would be written as 0.
    mutating func appendSeconds(_ value: Double) {
        let micros = max(0, Int((value * 1_000_000).rounded()))
        self.appendDigits(UInt(micros / 1_000_000), width: 1)
        self.bytes.append(UInt8(ascii: "."))
        self.appendDigits(UInt(micros % 1_000_000), width: 6)
    }

    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-26T02:45:32.135Z`.
    mutating func appendTimestamp(_ date: Date, clock: inout Clock) {
        let seconds = date.timeIntervalSince1970
        var t = time_t(seconds)
        if clock.second != t {
            var parts = tm()
            gmtime_r(&t, &parts)
            var prefix = JSONBytes(capacity: 20)
            prefix.appendDigits(UInt(max(0, Int(parts.tm_year) + 1900)), width: 4)
            prefix.append("-")
            prefix.appendDigits(UInt(parts.tm_mon + 1), width: 2)
            prefix.append("-")
            prefix.appendDigits(UInt(parts.tm_mday), width: 2)
            prefix.append("T")
            prefix.appendDigits(UInt(parts.tm_hour), width: 2)
            prefix.append(":")
            prefix.appendDigits(UInt(parts.tm_min), width: 2)
            prefix.append(":")
            prefix.appendDigits(UInt(parts.tm_sec), width: 2)
            prefix.append(".")
            clock.second = t
            clock.prefix = prefix.bytes
        }
        self.bytes.append(contentsOf: clock.prefix)
        self.appendDigits(UInt(max(0, min(999, Int((seconds - Double(t)) * 1000)))), width: 3)
        self.append("Z")
    }
}
