import NIOCore

/// Follows RFC 6455 frame boundaries in one direction of a tunnel without buffering or unmasking,
/// so the gateway knows when it may insert a frame of its own (a close frame on drain) between two
/// relayed ones. Payload bytes are skipped in bulk; only the 2–14 header bytes are looked at.
struct FrameBoundary {
    private var header: [UInt8] = []
    private var payloadLeft: UInt64 = 0

    /// No frame is partly relayed.
    var isAtBoundary: Bool { self.header.isEmpty && self.payloadLeft == 0 }

    mutating func consume(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { bytes in
            var index = 0
            while index < bytes.count {
                if self.payloadLeft > 0 {
                    let skip = Int(min(self.payloadLeft, UInt64(bytes.count - index)))
                    self.payloadLeft -= UInt64(skip)
                    index += skip
                    continue
                }
                self.header.append(bytes[index])
                index += 1
                guard self.header.count >= 2, self.header.count == Self.headerLength(self.header) else { continue }
                self.payloadLeft = Self.payloadLength(self.header)
                self.header.removeAll(keepingCapacity: true)
            }
        }
    }

    /// 2 bytes, the extended length (0, 2 or 8), the masking key (0 or 4).
    private static func headerLength(_ header: [UInt8]) -> Int {
        let length7 = header[1] & 0x7f
        let extended = length7 == 126 ? 2 : length7 == 127 ? 8 : 0
        return 2 + extended + (header[1] & 0x80 != 0 ? 4 : 0)
    }

    private static func payloadLength(_ header: [UInt8]) -> UInt64 {
        let length7 = header[1] & 0x7f
        guard length7 >= 126 else { return UInt64(length7) }
        let count = length7 == 126 ? 2 : 8
        return header[2..<(2 + count)].reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// A close frame with status 1001 "going away" (RFC 6455 §7.4.1), masked when it goes to the
    /// upstream (a client's frames must be, §5.3).
    static func goingAway(masked: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        let payload: [UInt8] = [0x03, 0xe9]
        var buffer = allocator.buffer(capacity: 8)
        buffer.writeInteger(UInt8(0x88))
        guard masked else {
            buffer.writeInteger(UInt8(payload.count))
            buffer.writeBytes(payload)
            return buffer
        }
        var generator = SystemRandomNumberGenerator()
        let key: [UInt8] = (0..<4).map { _ in UInt8.random(in: 0...255, using: &generator) }
        buffer.writeInteger(UInt8(0x80 | payload.count))
        buffer.writeBytes(key)
        buffer.writeBytes(payload.enumerated().map { $1 ^ key[$0 % 4] })
        return buffer
    }
}
