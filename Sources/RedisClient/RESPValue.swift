/// One RESP2 reply, as Swift values (what hiredis's reader reported is converted at the boundary,
/// and the parser's tape cleared at once, STYLE habit 5). RESP2 has one nil for both the null
/// bulk string (`$-1`) and the null array (`*-1`); hiredis 0.14 reports both as
/// `REDIS_REPLY_NIL`, so there is one `.null`.
public enum RESPValue: Sendable, Hashable {
    /// `+OK` and friends.
    case simpleString(String)
    /// `-ERR ...`: the server's answer to this command (not a connection failure).
    case error(String)
    /// `:42`
    case integer(Int64)
    /// `$3\r\nfoo`; binary-safe.
    case bulkString([UInt8])
    /// `$-1` or `*-1`.
    case null
    /// `*2 ...`, possibly nested.
    case array([RESPValue])

    /// The text of a simple or bulk string (bulk bytes decoded as UTF-8, invalid bytes replaced).
    public var string: String? {
        switch self {
        case .simpleString(let s): s
        case .bulkString(let b): String(decoding: b, as: UTF8.self)
        default: nil
        }
    }

    public var integer: Int64? {
        if case .integer(let i) = self { return i }
        return nil
    }

    public var array: [RESPValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// The message of an error reply, e.g. `NOSCRIPT No matching script. Please use EVAL.`
    public var errorMessage: String? {
        if case .error(let e) = self { return e }
        return nil
    }
}

extension RESPValue: CustomStringConvertible {
    public var description: String {
        switch self {
        case .simpleString(let s): "+\(s)"
        case .error(let e): "-\(e)"
        case .integer(let i): ":\(i)"
        case .bulkString(let b): "$\"\(String(decoding: b, as: UTF8.self))\""
        case .null: "(nil)"
        case .array(let a): "[" + a.map(\.description).joined(separator: ", ") + "]"
        }
    }
}
