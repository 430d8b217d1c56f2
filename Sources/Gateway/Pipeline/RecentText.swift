#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The `String` last made from a field's bytes on one connection, handed out again while the next
/// request sends the same bytes. A connection's requests name one host, and often one path, so
/// the text is made (UTF-8 checked, and allocated past 15 bytes) once, not per request; a value
/// that changes costs a compare and a copy into kept memory. Values up to `maxBytes` are kept.
struct RecentText {
    static let maxBytes = 256
    private var bytes: [UInt8] = []
    private var text = ""

    mutating func text(for value: UnsafeRawBufferPointer) -> String {
        guard let base = value.baseAddress, value.count > 0 else { return "" }
        if value.count == self.bytes.count, self.bytes.withUnsafeBytes({ memcmp($0.baseAddress!, base, value.count) == 0 }) {
            return self.text
        }
        let made = String(decoding: value, as: UTF8.self)
        if value.count <= Self.maxBytes {
            self.bytes.removeAll(keepingCapacity: true)
            self.bytes.append(contentsOf: value)
            self.text = made
        }
        return made
    }

    mutating func text(for value: UnsafeBufferPointer<UInt8>) -> String {
        self.text(for: UnsafeRawBufferPointer(value))
    }
}
