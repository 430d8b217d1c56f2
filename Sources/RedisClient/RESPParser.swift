private import CHiredis
import NIOCore

/// The hiredis RESP reader behind a Swift face: bytes in, `RESPValue`s out. Not thread-safe:
/// one parser belongs to one channel handler and is used on its event loop only.
///
/// Life cycle: `redisReaderCreateWithFunctions` in `init`, `redisReaderFree` in `close()` (called
/// from the handler's `handlerRemoved`) or, as a fallback, in `deinit`. The reader builds each reply
/// through our object functions into the parser's `ReplyTape` rather than as a tree of
/// `calloc`ed `redisReply`s (one per value: eight for the rate limiter's one-policy reply); the
/// tape is kept and cleared after each reply, so reading one allocates nothing in C.
final class RESPParser {
    private var reader: UnsafeMutablePointer<redisReader>?
    private let tape = ReplyTape()

    /// What the reply tape keeps between replies (bytes, values): bounded, for tests.
    var heldTapeCapacity: (bytes: Int, values: Int) { tape.heldCapacity }

    init() {
        reader = redisReaderCreateWithFunctions(ReplyTape.functions)
        precondition(reader != nil, "redisReaderCreateWithFunctions failed (out of memory)")
        // Copied by the reader into every read task: how the object functions find the tape.
        reader!.pointee.privdata = Unmanaged.passUnretained(tape).toOpaque()
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
            tape.clear()
            throw RedisError.protocolError.with(Self.errorText(r))
        }
        // Without a whole reply, what the tape holds is the start of the next one: kept.
        guard out != nil else { return nil }
        defer { tape.clear() }
        return tape.reply()
    }

    private static func errorText(_ r: UnsafeMutablePointer<redisReader>) -> String {
        withUnsafeBytes(of: r.pointee.errstr) { raw in
            let bytes = raw.prefix { $0 != 0 }
            return bytes.isEmpty ? "hiredis reader error \(r.pointee.err)" : String(decoding: bytes, as: UTF8.self)
        }
    }
}

/// One reply as hiredis's reader reports it, value by value in pre-order (an array before its
/// elements, elements in order), with string bytes side by side. The reader holds each value only
/// as an opaque non-null token (its index + 1) and never looks inside it.
private final class ReplyTape {
    private enum Kind: UInt8 { case string, status, error, integer, array, null }

    private struct Value {
        var kind: Kind
        /// The integer, or an array's element count.
        var number: Int64
        /// A string's bytes in `bytes`.
        var start: Int
        var count: Int
    }

    private var values: [Value] = []
    private var bytes: [UInt8] = []

    /// Kept for the next reply up to these sizes; a larger reply (a shared-cache body, a long
    /// `SCAN`) does not pin its memory for the connection's life (hiredis trims its own read
    /// buffer the same way, `REDIS_READER_MAX_BUF`).
    static let keptBytes = 64 << 10
    static let keptValues = 4096

    func clear() {
        if bytes.capacity > Self.keptBytes { bytes = [] } else { bytes.removeAll(keepingCapacity: true) }
        if values.capacity > Self.keptValues { values = [] } else { values.removeAll(keepingCapacity: true) }
    }

    /// For tests: what the tape holds on to between replies.
    var heldCapacity: (bytes: Int, values: Int) { (bytes.capacity, values.capacity) }

    /// The reply read so far, converted; call once the reader reported it whole.
    func reply() -> RESPValue {
        var index = 0
        return value(at: &index)
    }

    private func value(at index: inout Int) -> RESPValue {
        let v = values[index]
        index += 1
        switch v.kind {
        case .integer: return .integer(v.number)
        case .null: return .null
        case .string: return .bulkString(Array(bytes[v.start..<v.start + v.count]))
        case .status: return .simpleString(String(decoding: bytes[v.start..<v.start + v.count], as: UTF8.self))
        case .error: return .error(String(decoding: bytes[v.start..<v.start + v.count], as: UTF8.self))
        case .array:
            var items: [RESPValue] = []
            items.reserveCapacity(Int(v.number))
            for _ in 0..<v.number { items.append(value(at: &index)) }
            return .array(items)
        }
    }

    private func append(_ value: Value) -> UnsafeMutableRawPointer? {
        values.append(value)
        return UnsafeMutableRawPointer(bitPattern: values.count)
    }

    private func appendString(_ kind: Kind, _ text: UnsafeMutablePointer<CChar>?, _ length: Int) -> UnsafeMutableRawPointer? {
        let start = bytes.count
        if let text, length > 0 {
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: text, count: length))
        }
        return append(Value(kind: kind, number: 0, start: start, count: length))
    }

    /// The parser holds the tape for as long as its reader exists: borrowed, not retained.
    private static func withTape<R>(_ task: UnsafePointer<redisReadTask>?, _ body: (ReplyTape) -> R) -> R {
        Unmanaged<ReplyTape>.fromOpaque(task!.pointee.privdata)._withUnsafeGuaranteedRef(body)
    }

    /// hiredis 0.14's object functions; no captures, so they are C function pointers. Returning
    /// nil would tell the reader it is out of memory: the tokens never are. Written once by the
    /// lazy initializer, then only read (by hiredis): hence `nonisolated(unsafe)`.
    nonisolated(unsafe) static let functions: UnsafeMutablePointer<redisReplyObjectFunctions> = {
        let table = UnsafeMutablePointer<redisReplyObjectFunctions>.allocate(capacity: 1)
        table.initialize(to: redisReplyObjectFunctions(
            createString: { task, text, length in
                let kind: Kind = switch task!.pointee.type {
                case REDIS_REPLY_STATUS: .status
                case REDIS_REPLY_ERROR: .error
                default: .string
                }
                return withTape(task) { $0.appendString(kind, text, length) }
            },
            createArray: { task, elements in
                withTape(task) { $0.append(Value(kind: .array, number: Int64(elements), start: 0, count: 0)) }
            },
            createInteger: { task, number in
                withTape(task) { $0.append(Value(kind: .integer, number: Int64(number), start: 0, count: 0)) }
            },
            createNil: { task in
                withTape(task) { $0.append(Value(kind: .null, number: 0, start: 0, count: 0)) }
            },
            // The tape owns everything; a reply the reader drops (a protocol error) is cleared
            // with it.
            freeObject: { _ in }
        ))
        return table
    }()
}
