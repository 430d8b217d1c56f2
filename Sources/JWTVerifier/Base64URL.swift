/// Strict base64url (RFC 4648 §5) as JWS requires it (RFC 7515 §2): no padding, no whitespace, only the
/// URL-safe alphabet, and canonical — the unused low bits of the last character must be zero, so each
/// byte string has exactly one accepted encoding.
enum Base64URL {
    private static let invalid: UInt8 = 0xFF

    private static let decodeTable: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        for (index, char) in alphabet.enumerated() { table[Int(char)] = UInt8(index) }
        return table
    }()

    private static let encodeTable = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// Decodes `input`; `nil` for any non-alphabet byte (including `=`), an impossible length
    /// (`count % 4 == 1`) or non-zero trailing bits.
    static func decode(_ input: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        let remainder = input.count % 4
        if remainder == 1 { return nil }
        var output = [UInt8]()
        output.reserveCapacity(input.count / 4 * 3 + 2)
        let table = decodeTable
        var index = 0
        let fullEnd = input.count - remainder
        while index < fullEnd {
            let a = table[Int(input[index])], b = table[Int(input[index + 1])]
            let c = table[Int(input[index + 2])], d = table[Int(input[index + 3])]
            if (a | b | c | d) == invalid || a > 63 || b > 63 || c > 63 || d > 63 { return nil }
            output.append(a << 2 | b >> 4)
            output.append(b << 4 | c >> 2)
            output.append(c << 6 | d)
            index += 4
        }
        if remainder == 2 {
            let a = table[Int(input[index])], b = table[Int(input[index + 1])]
            if a > 63 || b > 63 || b & 0x0F != 0 { return nil }
            output.append(a << 2 | b >> 4)
        } else if remainder == 3 {
            let a = table[Int(input[index])], b = table[Int(input[index + 1])], c = table[Int(input[index + 2])]
            if a > 63 || b > 63 || c > 63 || c & 0x03 != 0 { return nil }
            output.append(a << 2 | b >> 4)
            output.append(b << 4 | c >> 2)
        }
        return output
    }

    static func decode(_ string: String) -> [UInt8]? {
        var copy = string
        return copy.withUTF8 { decode($0) }
    }

    static func encode<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        let input = Array(bytes)
        var output = [UInt8]()
        output.reserveCapacity((input.count + 2) / 3 * 4)
        var index = 0
        while index + 3 <= input.count {
            let value = UInt32(input[index]) << 16 | UInt32(input[index + 1]) << 8 | UInt32(input[index + 2])
            output.append(encodeTable[Int(value >> 18 & 63)])
            output.append(encodeTable[Int(value >> 12 & 63)])
            output.append(encodeTable[Int(value >> 6 & 63)])
            output.append(encodeTable[Int(value & 63)])
            index += 3
        }
        let rest = input.count - index
        if rest == 1 {
            let value = UInt32(input[index]) << 16
            output.append(encodeTable[Int(value >> 18 & 63)])
            output.append(encodeTable[Int(value >> 12 & 63)])
        } else if rest == 2 {
            let value = UInt32(input[index]) << 16 | UInt32(input[index + 1]) << 8
            output.append(encodeTable[Int(value >> 18 & 63)])
            output.append(encodeTable[Int(value >> 12 & 63)])
            output.append(encodeTable[Int(value >> 6 & 63)])
        }
        return String(decoding: output, as: UTF8.self)
    }
}
