import NIOCore
import NIOEmbedded
import Testing
@testable import RedisClient

/// Tier 1 and 2 (STYLE habit 13): the hiredis reader, the encoder, URL parsing, the pipeline
/// state machine and the handler in an `EmbeddedChannel`; no sockets.
struct RESPParserTests {
    func parse(_ text: String, chunked: Bool = false) throws -> [RESPValue] {
        let parser = RESPParser()
        defer { parser.close() }
        var out: [RESPValue] = []
        let bytes = Array(text.utf8)
        let chunks = chunked ? bytes.map { [$0] } : [bytes]
        for c in chunks {
            try parser.feed(ByteBuffer(bytes: c))
            while let v = try parser.next() { out.append(v) }
        }
        return out
    }

    @Test func scalars() throws {
        #expect(try parse("+OK\r\n") == [.simpleString("OK")])
        #expect(try parse("-ERR unknown command\r\n") == [.error("ERR unknown command")])
        #expect(try parse(":42\r\n:-7\r\n") == [.integer(42), .integer(-7)])
        #expect(try parse(":9223372036854775807\r\n") == [.integer(.max)])
        #expect(try parse("$5\r\nhello\r\n$0\r\n\r\n") == [.bulkString(Array("hello".utf8)), .bulkString([])])
        #expect(try parse("$-1\r\n*-1\r\n") == [.null, .null])
    }

    @Test func binarySafeBulk() throws {
        let v = try parse("$6\r\na\r\nb\0c\r\n")
        #expect(v == [.bulkString([97, 13, 10, 98, 0, 99])])
    }

    @Test func nestedArraysAndByteByByteFeeding() throws {
        let text = "*3\r\n:1\r\n*2\r\n$1\r\nx\r\n$-1\r\n*0\r\n+PONG\r\n"
        let expected: [RESPValue] = [.array([.integer(1), .array([.bulkString([120]), .null]), .array([])]), .simpleString("PONG")]
        #expect(try parse(text) == expected)
        #expect(try parse(text, chunked: true) == expected)
        #expect(expected[0].array?.count == 3)
        #expect(RESPValue.bulkString(Array("ab".utf8)).string == "ab")
        #expect(RESPValue.error("NOSCRIPT x").errorMessage == "NOSCRIPT x")
    }

    /// Random replies (nested up to the reader's depth, binary strings, errors, nulls), written
    /// back to back and fed in random pieces, come back equal: the reply tape keeps a reply cut
    /// anywhere across reads and clears only whole ones.
    @Test func randomRepliesFedInRandomPiecesRoundTrip() throws {
        var random = SystemRandomNumberGenerator()
        func value(depth: Int) -> RESPValue {
            switch Int.random(in: 0..<(depth < 6 ? 7 : 5), using: &random) {
            case 0: return .integer(Int64.random(in: .min ... .max, using: &random))
            case 1: return .simpleString(String(repeating: "k", count: Int.random(in: 0..<20, using: &random)))
            case 2: return .error("ERR " + String(repeating: "e", count: Int.random(in: 0..<20, using: &random)))
            case 3: return .null
            case 4: return .bulkString((0..<Int.random(in: 0..<300, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) })
            default: return .array((0..<Int.random(in: 0..<5, using: &random)).map { _ in value(depth: depth + 1) })
            }
        }
        func write(_ v: RESPValue, _ out: inout [UInt8]) {
            switch v {
            case .integer(let i): out += Array(":\(i)\r\n".utf8)
            case .simpleString(let t): out += Array("+\(t)\r\n".utf8)
            case .error(let t): out += Array("-\(t)\r\n".utf8)
            case .null: out += Array("$-1\r\n".utf8)
            case .bulkString(let b): out += Array("$\(b.count)\r\n".utf8) + b + [13, 10]
            case .array(let items):
                out += Array("*\(items.count)\r\n".utf8)
                for item in items { write(item, &out) }
            }
        }
        let parser = RESPParser()
        defer { parser.close() }
        for _ in 0..<200 {
            let replies = (0..<Int.random(in: 1..<6, using: &random)).map { _ in value(depth: 0) }
            var bytes: [UInt8] = []
            for reply in replies { write(reply, &bytes) }
            var got: [RESPValue] = []
            var offset = 0
            while offset < bytes.count {
                let piece = min(bytes.count - offset, Int.random(in: 1...64, using: &random))
                try parser.feed(ByteBuffer(bytes: bytes[offset..<offset + piece]))
                offset += piece
                while let v = try parser.next() { got.append(v) }
            }
            #expect(got == replies)
        }
    }

    /// A large reply (a shared-cache body) is not held for the connection's life; a small one's
    /// storage is kept for the next.
    @Test func aLargeReplyIsNotKeptAfterward() throws {
        let parser = RESPParser()
        defer { parser.close() }
        let body = [UInt8](repeating: 0x61, count: 1 << 20)
        try parser.feed(ByteBuffer(bytes: Array("$\(body.count)\r\n".utf8) + body + [13, 10]))
        #expect(try parser.next() == .bulkString(body))
        #expect(parser.heldTapeCapacity.bytes <= 64 << 10)
        try parser.feed(ByteBuffer(string: "*2\r\n$3\r\nabc\r\n:1\r\n"))
        #expect(try parser.next() == .array([.bulkString(Array("abc".utf8)), .integer(1)]))
        #expect(parser.heldTapeCapacity.bytes >= 3 && parser.heldTapeCapacity.values >= 2)
    }

    @Test func protocolErrorThrows() {
        #expect(throws: RedisError.protocolError) { try parse("?what\r\n") }
    }
}

struct RESPEncoderTests {
    @Test func encodesArrayOfBulkStrings() {
        var b = ByteBuffer()
        RESPEncoder.encode(["SET", "k", "", String(repeating: "v", count: 1234), "é"], into: &b)
        let expected = "*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$1234\r\n" + String(repeating: "v", count: 1234) + "\r\n$2\r\né\r\n"
        #expect(String(buffer: b) == expected)
    }
}

struct RedisURLTests {
    @Test func parsesForms() throws {
        let a = try RedisConfiguration(url: "redis://127.0.0.1:6380")
        #expect(a.host == "127.0.0.1" && a.port == 6380 && a.password == nil && a.username == nil && a.database == 0)
        let b = try RedisConfiguration(url: "redis://:s3cret@redis.internal:6379/4")
        #expect(b.host == "redis.internal" && b.username == nil && b.password == "s3cret" && b.database == 4)
        #expect(b.handshake == [["AUTH", "s3cret"], ["SELECT", "4"]])
        let c = try RedisConfiguration(url: "redis://gw%20user:p%40ss%3Aw%2Frd@[::1]:7000/")
        #expect(c.host == "::1" && c.port == 7000 && c.username == "gw user" && c.password == "p@ss:w/rd")
        #expect(c.handshake == [["AUTH", "gw user", "p@ss:w/rd"]])
        #expect(try RedisConfiguration(url: "redis://localhost").port == 6379)
        #expect(try RedisConfiguration(url: "redis://localhost").handshake.isEmpty)
    }

    @Test func rejectsWithoutQuotingTheURL() {
        for bad in ["http://h:1", "redis://:pw@:1", "redis://h:0", "redis://h:x", "redis://h:1/-1", "redis://pw@h:1", "redis://:p%zz@h"] {
            #expect(throws: RedisError.invalidURL) { try RedisConfiguration(url: bad) }
        }
        do {
            _ = try RedisConfiguration(url: "redis://u:topsecret@h:99999")
        } catch {
            #expect(!"\(error)".contains("topsecret"))
        }
        #expect(!"\(try! RedisConfiguration(url: "redis://u:topsecret@h:1"))".contains("topsecret"))
    }
}

struct PipelineStateMachineTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    @Test func repliesMatchInOrderAndOneTimerCoversAll() {
        var sm = RedisPipelineStateMachine<Int>()
        #expect(sm.enqueue(1, deadline: t0 + .milliseconds(50)) == .send(armTimer: t0 + .milliseconds(50)))
        #expect(sm.enqueue(2, deadline: t0 + .milliseconds(60)) == .send(armTimer: nil))
        // A tighter deadline re-arms earlier.
        #expect(sm.enqueue(3, deadline: t0 + .milliseconds(10)) == .send(armTimer: t0 + .milliseconds(10)))
        guard case .succeed(1) = sm.replyReceived() else { Issue.record("want 1"); return }
        // A replaced timer firing is ignored.
        guard case .none = sm.timerFired(deadline: t0 + .milliseconds(50)) else { Issue.record("stale"); return }
        // Command 3 (deadline +10) has not been answered: everything fails, the connection closes.
        guard case .timedOut(let failed) = sm.timerFired(deadline: t0 + .milliseconds(10)) else { Issue.record("timeout"); return }
        #expect(failed == [2, 3])
        #expect(sm.enqueue(4, deadline: t0 + .seconds(1)) == .fail)
    }

    @Test func timerRearmsWhenHeadWasAnswered() {
        var sm = RedisPipelineStateMachine<Int>()
        _ = sm.enqueue(1, deadline: t0 + .milliseconds(10))
        _ = sm.enqueue(2, deadline: t0 + .milliseconds(30))
        _ = sm.replyReceived()
        guard case .rearm(let d) = sm.timerFired(deadline: t0 + .milliseconds(10)) else { Issue.record("rearm"); return }
        #expect(d == t0 + .milliseconds(30))
        _ = sm.replyReceived()
        guard case .none = sm.timerFired(deadline: d) else { Issue.record("idle"); return }
        guard case .unexpectedReply = sm.replyReceived() else { Issue.record("unexpected"); return }
    }
}

extension PipelineStateMachineTests {
    /// A caller's `replyBy` lets that caller go and keeps its command in line: the late reply is
    /// dropped, the next reply goes to the next command, and the connection stays open.
    @Test func aCallerLetGoAtItsDeadlineLeavesItsReplyToBeDropped() {
        var sm = RedisPipelineStateMachine<Int>()
        #expect(sm.enqueue(1, deadline: t0 + .seconds(2), replyBy: t0 + .milliseconds(20)) == .send(armTimer: t0 + .milliseconds(20)))
        // A later caller deadline does not re-arm: one timer for the whole line.
        #expect(sm.enqueue(2, deadline: t0 + .seconds(2), replyBy: t0 + .milliseconds(25)) == .send(armTimer: nil))
        #expect(sm.enqueue(3, deadline: t0 + .seconds(2)) == .send(armTimer: nil))
        guard case .letGo(let late, let next) = sm.timerFired(deadline: t0 + .milliseconds(20)) else { Issue.record("let go"); return }
        #expect(late == [1])
        #expect(next == t0 + .milliseconds(25))
        guard case .letGo(let late2, let next2) = sm.timerFired(deadline: t0 + .milliseconds(25)) else { Issue.record("let go 2"); return }
        #expect(late2 == [2])
        // Only the connection's own deadline is left.
        #expect(next2 == t0 + .seconds(2))
        guard case .dropLate = sm.replyReceived() else { Issue.record("drop 1"); return }
        guard case .dropLate = sm.replyReceived() else { Issue.record("drop 2"); return }
        guard case .succeed(3) = sm.replyReceived() else { Issue.record("want 3"); return }
        #expect(!sm.isClosed)
    }

    /// Past the connection's own deadline the line is out of step for good: close, and only the
    /// callers still waiting are failed (a caller let go earlier was failed then).
    @Test func theConnectionDeadlineStillClosesWithCallersLetGo() {
        var sm = RedisPipelineStateMachine<Int>()
        _ = sm.enqueue(1, deadline: t0 + .milliseconds(100), replyBy: t0 + .milliseconds(20))
        _ = sm.enqueue(2, deadline: t0 + .milliseconds(150))
        guard case .letGo([1], let next) = sm.timerFired(deadline: t0 + .milliseconds(20)) else { Issue.record("let go"); return }
        #expect(next == t0 + .milliseconds(100))
        guard case .timedOut(let failed) = sm.timerFired(deadline: t0 + .milliseconds(100)) else { Issue.record("timeout"); return }
        #expect(failed == [2])
        #expect(sm.isClosed)
    }

    /// A caller answered before its deadline is not let go when the timer fires.
    @Test func anAnsweredCallerIsNotLetGo() {
        var sm = RedisPipelineStateMachine<Int>()
        _ = sm.enqueue(1, deadline: t0 + .seconds(2), replyBy: t0 + .milliseconds(20))
        _ = sm.enqueue(2, deadline: t0 + .seconds(2), replyBy: t0 + .milliseconds(30))
        guard case .succeed(1) = sm.replyReceived() else { Issue.record("want 1"); return }
        guard case .rearm(let next) = sm.timerFired(deadline: t0 + .milliseconds(20)) else { Issue.record("rearm"); return }
        #expect(next == t0 + .milliseconds(30))
        guard case .succeed(2) = sm.replyReceived() else { Issue.record("want 2"); return }
        // Nothing in flight: the timer is not re-armed.
        guard case .none = sm.timerFired(deadline: next) else { Issue.record("idle"); return }
    }
}

struct RedisChannelHandlerTests {
    func setUp() throws -> (EmbeddedChannel, EmbeddedEventLoop) {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(handler: RedisChannelHandler(), loop: loop)
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, loop)
    }

    func request(_ loop: EmbeddedEventLoop, _ args: [String], timeout: TimeAmount = .milliseconds(100)) -> RedisRequest {
        RedisRequest(arguments: args, reply: .promise(loop.makePromise()), timeout: timeout)
    }

    @Test func batchIsOneWriteAndRepliesCompleteInOrder() throws {
        let (channel, loop) = try setUp()
        let reqs = [request(loop, ["PING"]), request(loop, ["GET", "k"]), request(loop, ["INCR", "n"])]
        try channel.writeOutbound(RedisRequestBatch(requests: reqs))
        let written = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(String(buffer: written) == "*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n")
        // Replies split awkwardly across reads.
        try channel.writeInbound(ByteBuffer(string: "+PONG\r\n$-"))
        #expect(try reqs[0].promise.futureResult.wait() == .simpleString("PONG"))
        try channel.writeInbound(ByteBuffer(string: "1\r\n:7\r\n"))
        #expect(try reqs[1].promise.futureResult.wait() == .null)
        #expect(try reqs[2].promise.futureResult.wait() == .integer(7))
        _ = try channel.finish()
    }

    @Test func timeoutFailsEverythingInFlightAndCloses() throws {
        let (channel, loop) = try setUp()
        let slow = request(loop, ["DEBUG", "SLEEP", "1"], timeout: .milliseconds(50))
        let next = request(loop, ["PING"], timeout: .milliseconds(500))
        try channel.writeOutbound(RedisRequestBatch(requests: [slow, next]))
        loop.advanceTime(by: .milliseconds(49))
        #expect(channel.isActive)
        loop.advanceTime(by: .milliseconds(1))
        #expect(throws: RedisError.timeout) { try slow.promise.futureResult.wait() }
        #expect(throws: RedisError.timeout) { try next.promise.futureResult.wait() }
        #expect(!channel.isActive)
        // Writes after the close fail (the pool fails their promises from this).
        let late = request(loop, ["PING"])
        #expect(throws: (any Error).self) { try channel.writeAndFlush(RedisRequestBatch(requests: [late])).wait() }
        late.promise.fail(RedisError.connectionClosed)
    }

    @Test func unsolicitedReplyIsAProtocolError() throws {
        let (channel, loop) = try setUp()
        let r = request(loop, ["PING"])
        try channel.writeOutbound(RedisRequestBatch(requests: [r]))
        try channel.writeInbound(ByteBuffer(string: "+PONG\r\n+EXTRA\r\n"))
        #expect(try r.promise.futureResult.wait() == .simpleString("PONG"))
        #expect(!channel.isActive)
    }

    @Test func closeFailsPending() throws {
        let (channel, loop) = try setUp()
        let r = request(loop, ["PING"])
        try channel.writeOutbound(RedisRequestBatch(requests: [r]))
        _ = try channel.finish(acceptAlreadyClosed: true)
        #expect(throws: RedisError.connectionClosed) { try r.promise.futureResult.wait() }
    }

    /// A callback, unlike a promise, would run again if told twice: every way a command ends —
    /// a reply, a caller let go at `replyBy` (its late reply dropped), a timeout that closes the
    /// connection, the close after it, a batch written after the close — tells it exactly once.
    @Test func callbacksAreToldExactlyOnce() throws {
        let (channel, loop) = try setUp()
        // One thread (the embedded loop's) calls and reads it.
        final class Told: @unchecked Sendable { var calls: [String: [String]] = [:] }
        let told = Told()
        func callback(_ name: String, timeout: TimeAmount = .milliseconds(500), replyBy: NIODeadline? = nil) -> RedisRequest {
            RedisRequest(arguments: ["PING"], reply: .callback { result in
                let text = switch result {
                case .success(let value): "\(value)"
                case .failure(let error): "\(error)"
                }
                told.calls[name, default: []].append(text)
            }, timeout: timeout, replyBy: replyBy)
        }
        let answered = callback("answered")
        let letGo = callback("letGo", replyBy: loop.now + .milliseconds(10))
        let timedOut = callback("timedOut", timeout: .milliseconds(100))
        try channel.writeOutbound(RedisRequestBatch(requests: [answered, letGo, timedOut]))
        try channel.writeInbound(ByteBuffer(string: "+PONG\r\n"))
        loop.advanceTime(by: .milliseconds(10))
        // letGo's late reply arrives, and is dropped.
        try channel.writeInbound(ByteBuffer(string: "+LATE\r\n"))
        loop.advanceTime(by: .milliseconds(90))
        #expect(!channel.isActive)
        let afterClose = callback("afterClose")
        #expect(throws: (any Error).self) { try channel.writeAndFlush(RedisRequestBatch(requests: [afterClose])).wait() }
        _ = try? channel.finish(acceptAlreadyClosed: true)
        loop.advanceTime(by: .seconds(1))
        let calls = told.calls
        #expect(calls["answered"] == ["\(RESPValue.simpleString("PONG"))"])
        #expect(calls["letGo"] == ["\(RedisError.deadlineExceeded)"])
        #expect(calls["timedOut"] == ["\(RedisError.timeout)"])
        // Never taken by the handler: the pool fails it from the write's failure, once.
        #expect(calls["afterClose"] == nil)
    }
}

extension RedisRequest {
    /// The promise of a request made with `.promise` (every request in these tests but the
    /// callback ones).
    var promise: EventLoopPromise<RESPValue> {
        guard case .promise(let promise) = self.reply else { preconditionFailure("a callback request") }
        return promise
    }
}
