import NIOCore

/// RESP2 request encoding (an array of bulk strings, the only form Redis accepts for commands
/// from clients besides inline commands). Done in Swift: measured as fast as
/// `redisFormatCommandArgv`, writes straight into the outgoing `ByteBuffer`, and needs no C
/// allocation to free.
enum RESPEncoder {
    static func encode(_ arguments: [String], into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "*"))
        writeDecimal(arguments.count, into: &buffer)
        for arg in arguments {
            // In place (no `var` copy for `withUTF8`, which costs a retain/release pair).
            if arg.utf8.withContiguousStorageIfAvailable({ write($0, into: &buffer) }) == nil {
                var arg = arg
                arg.withUTF8 { write($0, into: &buffer) }
            }
        }
    }

    private static func write(_ bytes: UnsafeBufferPointer<UInt8>, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "$"))
        writeDecimal(bytes.count, into: &buffer)
        buffer.writeBytes(bytes)
        buffer.writeInteger(crlf)
    }

    private static let crlf: UInt16 = 0x0D0A

    /// `n` in decimal followed by CRLF, without building a String.
    private static func writeDecimal(_ n: Int, into buffer: inout ByteBuffer) {
        precondition(n >= 0)
        if n < 10 {
            buffer.writeInteger(UInt8(ascii: "0") + UInt8(n))
        } else {
            var digits: (UInt64, UInt64) = (0, 0) // room for 16 digits, ample for lengths
            var count = 0
            var v = n
            withUnsafeMutableBytes(of: &digits) { raw in
                while v > 0 {
                    raw[15 - count] = UInt8(ascii: "0") + UInt8(v % 10)
                    v /= 10
                    count += 1
                }
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: raw[(16 - count)...]))
            }
        }
        buffer.writeInteger(crlf)
    }
}
