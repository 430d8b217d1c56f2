import NIOCore
import NIOHTTP1

/// Fields a rewrite reads as bytes, whichever form the head came in: the field lines a strict
/// parser kept (`FieldLines`) or NIO's decoded `HTTPHeaders`. The rewrite rules are written once,
/// on bytes, and the forwarding path builds no `String` per field.
protocol FieldSource {
    /// Calls `body` with each field's name and value (as the head has it: a parser's value has no
    /// leading SP/HTAB and keeps trailing ones, as llhttp gives it) while it returns true.
    func forEachField(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Bool)
    var fieldCount: Int { get }
    /// At least the bytes of every `name: value` CRLF line.
    var encodedSize: Int { get }
}

extension FieldSource {
    /// Whether the first field named `name` (lowercase) has a value starting with `prefix`, ASCII
    /// case ignored.
    func firstValue(of name: StaticString, hasPrefix prefix: StaticString) -> Bool {
        var matches = false
        self.forEachField { fieldName, value in
            guard bytesEqualIgnoringASCIICase(fieldName, name) else { return true }
            matches = bytesHavePrefixIgnoringASCIICase(value, prefix)
            return false
        }
        return matches
    }
}

/// `bytes` begin with `prefix` (lowercase), ASCII case ignored.
func bytesHavePrefixIgnoringASCIICase(_ bytes: UnsafeBufferPointer<UInt8>, _ prefix: StaticString) -> Bool {
    let count = prefix.utf8CodeUnitCount
    return bytes.count >= count && bytesEqualIgnoringASCIICase(UnsafeBufferPointer(rebasing: bytes[..<count]), prefix)
}

/// A head's field lines as a strict parser accepted them (`HTTP1Grammar.readFields`): each
/// `name: value` CRLF, kept as the peer's bytes — for an upstream response, a slice of the read
/// buffer, for a client request a slice of the connection's read buffer — and read in place.
/// `headers` builds NIO's `HTTPHeaders` for the paths that keep or edit a head (the cache, a
/// WebSocket switch).
struct FieldLines: FieldSource {
    /// Every field line with its CRLF; the head's empty line is not included.
    let bytes: ByteBuffer
    let fieldCount: Int

    /// `bytes` must hold lines that passed `HTTP1Grammar.readFields`: they are not checked again.
    init(validated bytes: ByteBuffer, count: Int) {
        self.bytes = bytes
        self.fieldCount = count
    }

    var encodedSize: Int { self.bytes.readableBytes }

    func forEachField(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Bool) {
        self.bytes.withUnsafeReadableBytes { raw in
            let lines = raw.assumingMemoryBound(to: UInt8.self)
            var start = 0
            while start < raw.count {
                let lineEnd = HTTP1Grammar.lineEnd(raw, from: start, to: raw.count)
                let colon = HTTP1Grammar.byteIndex(of: UInt8(ascii: ":"), in: raw, from: start, to: lineEnd)!
                var valueStart = colon + 1
                while valueStart < lineEnd, lines[valueStart] == UInt8(ascii: " ") || lines[valueStart] == UInt8(ascii: "\t") {
                    valueStart += 1
                }
                let name = UnsafeBufferPointer(rebasing: lines[start..<colon])
                guard body(name, UnsafeBufferPointer(rebasing: lines[valueStart..<lineEnd])) else { return }
                start = lineEnd + 2
            }
        }
    }

    /// The fields as NIO's decoder gives them: names as sent, values without leading whitespace.
    var headers: HTTPHeaders {
        var headers = HTTPHeaders()
        headers.reserveCapacity(self.fieldCount)
        self.forEachField { name, value in
            headers.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
            return true
        }
        return headers
    }
}

extension HTTPHeaders: FieldSource {
    func forEachField(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Bool) {
        // Indexed, not iterated: an iterator allocates per element in the debug build `make test` counts.
        var index = self.startIndex
        while index != self.endIndex {
            var (name, value) = self[index]
            // Native strings (all decoders make) are contiguous UTF-8: no copy.
            guard name.withUTF8({ name in value.withUTF8 { body(name, $0) } }) else { return }
            index = self.index(after: index)
        }
    }

    var fieldCount: Int { self.count }
}
