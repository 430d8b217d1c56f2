private import CHiredis
import NIOCore

/// The hiredis RESP reader behind a Swift face: bytes in, `RESPValue`s out. Not thread-safe:
/// one parser belongs to one channel handler and is used on its event loop only.
///
/// Life cycle: `redisReaderCreate` in `init`, `redisReaderFree` in `close()` (called from the
/// handler's `handlerRemoved`) or, as a fallback, in `deinit`. Every reply tree hiredis hands
/// out is converted to a `RESPValue` and released with `freeReplyObject` before `next()` returns,
/// so no C memory outlives one call.
final class RESPParser {
    private var reader: UnsafeMutablePointer<redisReader>?

    init() {
        reader = redisReaderCreate()
        precondition(reader != nil, "redisReaderCreate failed (out of memory)")
    }

    deinit { close() }

    /// Frees the reader; later calls to `feed` / `next` throw.
    func close() {
        if let r = reader {
            redisReaderFree(r)
            reader = nil
        }
    }

    /// Hands `bytes` to the reader (hiredis copies them into its own buffer).
    func feed(_ bytes: ByteBuffer) throws {
        guard let r = reader else { throw RedisError.protocolError.with("reader closed") }
        let rc = bytes.withUnsafeReadableBytes { raw -> Int32 in
            guard let base = raw.baseAddress, raw.count > 0 else { return REDIS_OK }
            return redisReaderFeed(r, base.assumingMemoryBound(to: CChar.self), raw.count)
        }
        if rc != REDIS_OK { throw RedisError.protocolError.with(Self.errorText(r)) }
    }

    /// The next complete reply, or nil when more bytes are needed. After a thrown protocol error
    /// the reader is unusable: the connection must be closed.
    func next() throws -> RESPValue? {
        guard let r = reader else { throw RedisError.protocolError.with("reader closed") }
        var out: UnsafeMutableRawPointer?
        if redisReaderGetReply(r, &out) != REDIS_OK {
            throw RedisError.protocolError.with(Self.errorText(r))
        }
        guard let reply = out else { return nil }
        defer { freeReplyObject(reply) }
        return Self.convert(reply.assumingMemoryBound(to: redisReply.self))
    }

    /// Maps one hiredis reply tree to a Swift value (copies all bytes).
    private static func convert(_ reply: UnsafePointer<redisReply>) -> RESPValue {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(r.integer))
        case REDIS_REPLY_STRING:
            return .bulkString(bytes(r.str, r.len))
        case REDIS_REPLY_STATUS:
            return .simpleString(String(decoding: bytes(r.str, r.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: bytes(r.str, r.len), as: UTF8.self))
        case REDIS_REPLY_ARRAY:
            var items: [RESPValue] = []
            items.reserveCapacity(r.elements)
            for i in 0..<r.elements {
                if let child = r.element?[i] { items.append(convert(child)) } else { items.append(.null) }
            }
            return .array(items)
        default: // REDIS_REPLY_NIL; hiredis 0.14 has no RESP3 types
            return .null
        }
    }

    private static func bytes(_ p: UnsafeMutablePointer<CChar>?, _ n: Int) -> [UInt8] {
        guard let p, n > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }

    private static func errorText(_ r: UnsafeMutablePointer<redisReader>) -> String {
        withUnsafeBytes(of: r.pointee.errstr) { raw in
            let bytes = raw.prefix { $0 != 0 }
            return bytes.isEmpty ? "hiredis reader error \(r.pointee.err)" : String(decoding: bytes, as: UTF8.self)
        }
    }
}
