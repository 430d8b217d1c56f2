import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
@testable import Gateway

/// Differential tests of the client request parser: every input goes through
/// `HTTP1RequestParser` (driven as `HTTP1ServerHandler` drives it, unparsed bytes kept between
/// reads) and through NIO's llhttp request decoder with the same header limit. Where the parser
/// accepts, llhttp must read the same requests from the same bytes: method, target, version,
/// fields, body and end, and keep the connection open if the parser does. Where llhttp refuses,
/// the parser must refuse too; it may refuse more (the head limit counts the request line and
/// line ends too, and only the strict grammar passes). llhttp stops at a request that asks to
/// switch protocols, so messages are compared up to the first such request. Cases are random and
/// mutated smuggling vectors from a seeded generator: `FUZZ_CASES` and `FUZZ_SEED` (`make fuzz`)
/// run more.
@Suite struct HTTP1RequestDifferentialTests {
    static let defaultCases = 3000

    @Test(arguments: [
        // Framing that an upstream could read differently: refused.
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3,3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\n\n",
        "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHo\0st: a\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        "GET / HTTP/0.9\r\n\r\n",
        "get / HTTP/1.1\r\nHost: a\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: caf\u{e9}\r\n\r\n",
        "GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
        // Strict heads: the parser reads these.
        "GET /api/bookings?id=1&x=%20 HTTP/1.1\r\nHost: a\r\nUser-Agent: h2load nghttp2/1.52.0\r\nAccept: */*\r\n\r\n",
        "POST /api/auth/login HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "DELETE /a HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Spaces:   v  \t\r\nConnection: close\r\n\r\n",
        // After a request that is not kept alive, llhttp refuses what follows.
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a\r\n\r\n\r\nGET / HTTP/1.0\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, keep-alive\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ])
    func fixedVector(_ text: String) throws {
        let input = Array(text.utf8)
        try Self.compare(input, splits: [], maxHeadBytes: 8192)
        for cut in 0...input.count {
            try Self.compare(input, splits: [cut], maxHeadBytes: 8192)
        }
    }

    @Test func randomAndMutatedCasesDecodeAsLLHTTPDoes() throws {
        let (cases, accepted, refused) = try DifferentialFuzz.run(defaultSeed: 0x5EED_0011, defaultCases: Self.defaultCases) { random in
            var generator = RequestGenerator(random: random)
            let input = generator.input()
            let maxHeadBytes = generator.random.chance(1, in: 8) ? Int.random(in: 24...256, using: &generator.random) : 8192
            random = generator.random
            return (input, maxHeadBytes)
        } check: { input, maxHeadBytes, splits, label in
            let ours = try Self.compare(input, splits: splits, maxHeadBytes: maxHeadBytes, label: label)
            return ours.failed ? false : ours.messages.contains(where: \.ended) ? true : nil
        }
        // The generator reaches both sides of the grammar (a test of the test).
        #expect(accepted > cases / 20, "accepted: \(accepted) of \(cases)")
        #expect(refused > cases / 10, "refused: \(refused) of \(cases)")
    }

    // MARK: - Running both

    struct Decoded: Equatable, CustomStringConvertible {
        struct Message: Equatable {
            var method: HTTPMethod
            var uri: String
            var version: HTTPVersion
            var fields: [String]
            var keepAlive: Bool
            var body: [UInt8] = []
            var ended = false
        }

        var messages: [Message] = []
        var failed = false

        var description: String {
            "failed: \(self.failed), messages: "
                + self.messages.map { "\($0.method) \($0.uri) \($0.version) \($0.fields) keepAlive \($0.keepAlive) body \($0.body.count) ended \($0.ended)" }
                .joined(separator: "; ")
        }

        /// Up to the first request that asks to switch protocols, after which llhttp stops.
        var comparable: Decoded {
            var cut = self
            if let first = self.messages.firstIndex(where: { $0.asksToSwitch }) {
                cut.messages = Array(self.messages[...first])
                cut.failed = false
            }
            return cut
        }

        mutating func head(_ head: HTTPRequestHead, keepAlive: Bool) {
            self.messages.append(.init(
                method: head.method, uri: head.uri, version: head.version,
                fields: head.headers.map { "\($0.name): \($0.value)" }, keepAlive: keepAlive
            ))
        }

        mutating func head(_ head: RequestHead, keepAlive: Bool) {
            self.messages.append(.init(
                method: head.method, uri: head.uri, version: head.version,
                fields: head.headers.map { "\($0.name): \($0.value)" }, keepAlive: keepAlive
            ))
        }
    }

    /// The parser as `HTTP1ServerHandler` drives it.
    final class ParserDriver: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var parser: HTTP1RequestParser
        var unparsed: ByteBuffer?
        var decoded = Decoded()

        init(maxHeadBytes: Int) { self.parser = HTTP1RequestParser(maxHeadBytes: maxHeadBytes) }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !self.decoded.failed else { return }
            var input = Self.unwrapInboundIn(data)
            if var unparsed = self.unparsed.take() {
                unparsed.writeBuffer(&input)
                input = unparsed
            }
            do {
                while let event = try self.parser.next(&input) {
                    switch event {
                    case .head(let head, let keepAlive, _): self.decoded.head(head, keepAlive: keepAlive)
                    case .body(let body): self.decoded.messages[self.decoded.messages.count - 1].body += body.readableBytesView
                    case .end: self.decoded.messages[self.decoded.messages.count - 1].ended = true
                    }
                }
            } catch {
                self.decoded.failed = true
            }
            if input.readableBytes > 0 { self.unparsed = input }
        }
    }

    final class LLHTTPCollector: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        var decoded = Decoded()

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch Self.unwrapInboundIn(data) {
            case .head(let head): self.decoded.head(head, keepAlive: head.isKeepAlive)
            case .body(let body): self.decoded.messages[self.decoded.messages.count - 1].body += body.readableBytesView
            case .end: self.decoded.messages[self.decoded.messages.count - 1].ended = true
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            self.decoded.failed = true
        }
    }

    static func feed(_ input: [UInt8], splits: [Int], into channel: EmbeddedChannel, failed: () -> Bool) {
        var start = 0
        for cut in splits + [input.count] where cut >= start {
            var buffer = channel.allocator.buffer(capacity: cut - start)
            buffer.writeBytes(input[start..<cut])
            start = cut
            if failed() { break }
            do { try channel.writeInbound(buffer) } catch { return }
        }
    }

    @discardableResult
    static func compare(_ input: [UInt8], splits: [Int], maxHeadBytes: Int, label: String = "") throws -> Decoded {
        let driver = ParserDriver(maxHeadBytes: maxHeadBytes)
        let ours = EmbeddedChannel(handler: driver)
        Self.feed(input, splits: splits, into: ours) { driver.decoded.failed }
        _ = try? ours.finish()

        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = maxHeadBytes
        limits.maxHeaderFieldSize = maxHeadBytes
        let collector = LLHTTPCollector()
        let reference = EmbeddedChannel()
        try reference.pipeline.syncOperations.addHandlers([
            ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop, limitConfiguration: limits)),
            collector,
        ])
        Self.feed(input, splits: splits, into: reference) { collector.decoded.failed }
        _ = try? reference.finish()

        // Messages only: where llhttp refuses an unfinished head early (a bad byte before the line
        // end) the parser may still be waiting for the line end; neither has passed anything on.
        do {
            var mine = driver.decoded.comparable
            var theirs = collector.decoded.comparable
            mine.failed = false
            theirs.failed = false
            if driver.decoded.failed {
                // The parser refused: llhttp may have read more before refusing, never less.
                theirs.messages = Array(theirs.messages.prefix(mine.messages.count))
                if let last = mine.messages.indices.last, last < theirs.messages.count, !mine.messages[last].ended {
                    theirs.messages[last].body = Array(theirs.messages[last].body.prefix(mine.messages[last].body.count))
                    theirs.messages[last].ended = false
                }
            }
            // Closing a connection llhttp would keep is safe; keeping one it would close is not.
            for index in mine.messages.indices where index < theirs.messages.count {
                if !mine.messages[index].keepAlive && theirs.messages[index].keepAlive { mine.messages[index].keepAlive = true }
            }
            #expect(
                mine == theirs,
                "\(label) splits \(splits) max \(maxHeadBytes): \(String(decoding: input, as: UTF8.self).debugDescription)\n ours:   \(driver.decoded)\n llhttp: \(collector.decoded)"
            )
        }
        return driver.decoded
    }
}

extension HTTP1RequestDifferentialTests.Decoded.Message {
    /// llhttp's rule for where it stops: CONNECT, or a `Connection` (or `Proxy-Connection`)
    /// listing `upgrade` with a non-empty `Upgrade`.
    var asksToSwitch: Bool {
        if self.method == .CONNECT { return true }
        var upgradeNamed = false
        var connectionUpgrade = false
        for field in self.fields {
            let colon = field.firstIndex(of: ":")!
            let name = field[..<colon].lowercased()
            let value = field[field.index(colon, offsetBy: 2)...]
            if name == "upgrade", value.contains(where: { $0 != " " && $0 != "\t" }) { upgradeNamed = true }
            if name == "connection" || name == "proxy-connection", String(value).containsListElement("upgrade") { connectionUpgrade = true }
        }
        return upgradeNamed && connectionUpgrade
    }
}

/// Requests built from pieces that are valid, almost valid and known smuggling vectors, then
/// mutated byte by byte.
struct RequestGenerator {
    var random: SplitMix64

    static let methods = ["GET", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "get", "FOO", "GETT", "PROPFIND", "G ET", ""]
    static let targets = [
        "/", "/api/bookings", "/api/bookings?id=1&q=%41b", "/a/b/../c", "/~user/;p=1", "/x:y@z!$&'()*+,=",
        "*", "http://a.example/x", "a.example:443", "/sp ace", "/tab\t", "/hash#frag", "/\u{e9}", "/quote\"",
        "/a%", "/[brackets]", "/{braces}", "/back\\slash", "/pipe|", "/caret^", "/`", "//double",
    ]
    static let versions = [
        "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.10",
        "HTTP/01.1", "HTTP/1", "HTTP/1.1 ", "HTTP/11",
    ]
    static let names = [
        "Host", "User-Agent", "Accept", "X-Request-Id", "Connection", "Content-Length", "content-length",
        "Transfer-Encoding", "transfer-encoding", "Upgrade", "Expect", "X-Forwarded-For", "Cookie", "Authorization",
        "X-Very-Long-Field-Name-For-Strings", "a", "!#$%&'*+-.^_`|~", "Content-Length ", " Host", "X:Y", "X@Y",
        "Content-Lengt", "Transfer-Encoding\t", "Proxy-Connection", "proxy-connection",
    ]
    static let values = [
        "a.example", "h2load nghttp2/1.52.0", "*/*", "keep-alive", "close", "upgrade", "Upgrade, keep-alive",
        "websocket", "100-continue", "0", "3", "5", "05", "+5", "-1", "5, 5", "5,5", "5 5", " 5", "0x5", "99999999999999999999",
        "18446744073709551616", "chunked", "Chunked", "chunked, identity", "identity", "gzip, chunked", " chunked",
        "chunked ", "", "  spaced  ", "tab\tinside", "quote\"d", "caf\u{e9}", "1.1.1.1, 2.2.2.2", "a=b; c=d",
        "Bearer abc.def.ghi",
    ]

    init(random: SplitMix64) { self.random = random }

    mutating func pick<T>(_ items: [T]) -> T { self.random.pick(items) }

    /// One to three pipelined requests, then sometimes mutated.
    mutating func input() -> [UInt8] {
        var bytes: [UInt8] = []
        for _ in 0..<Int.random(in: 1...3, using: &self.random) {
            bytes += self.request()
        }
        if self.random.chance(1, in: 2) {
            for _ in 0..<Int.random(in: 1...3, using: &self.random) { self.mutate(&bytes) }
        }
        return bytes
    }

    mutating func request() -> [UInt8] {
        let strict = self.random.chance(1, in: 2)
        let method = strict ? self.pick(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]) : self.pick(Self.methods)
        let target = strict ? self.pick(Array(Self.targets[0..<6])) : self.pick(Self.targets)
        let version = strict ? self.pick(["HTTP/1.1", "HTTP/1.0"]) : self.pick(Self.versions)
        let space = strict || self.random.chance(3, in: 4) ? " " : self.pick(["  ", "\t", ""])
        var text = "\(method)\(space)\(target) \(version)\r\n"
        var bodyLength = 0
        for _ in 0..<Int.random(in: 0...6, using: &self.random) {
            var name = self.pick(Self.names)
            var value = self.pick(Self.values)
            // Strict requests mostly keep to plain fields, sometimes take any (special fields in
            // an otherwise strict head are where the two parsers could part).
            if strict && !self.random.chance(1, in: 4) {
                name = self.pick(["Host", "User-Agent", "Accept", "X-Request-Id", "Connection", "Cookie", "X-Very-Long-Field-Name-For-Strings"])
                value = self.pick(["a.example", "h2load nghttp2/1.52.0", "*/*", "keep-alive", "close", "", "  spaced  ", "a=b; c=d"])
            }
            if name.lowercased() == "content-length", let length = Int(value), (0..<64).contains(length) { bodyLength = length }
            if self.random.chance(1, in: 40) { value = String(repeating: "v", count: Int.random(in: 100...400, using: &self.random)) }
            let separator = strict || self.random.chance(5, in: 6) ? ": " : self.pick([":", " : ", ":\t", ":  "])
            text += "\(name)\(separator)\(value)\r\n"
        }
        if strict && self.random.chance(1, in: 3) {
            bodyLength = Int.random(in: 0...20, using: &self.random)
            text += "Content-Length: \(bodyLength)\r\n"
        }
        text += "\r\n"
        var bytes = Array(text.utf8)
        if text.lowercased().contains("transfer-encoding") && self.random.chance(1, in: 2) {
            bytes += Array(self.pick(["0\r\n\r\n", "3\r\nabc\r\n0\r\n\r\n", "3\nabc\n0\n\n", "x\r\n\r\n", "3;ext\r\nabc\r\n0\r\n\r\n"]).utf8)
        } else {
            bytes += (0..<bodyLength).map { _ in UInt8.random(in: 0x20...0x7E, using: &self.random) }
        }
        return bytes
    }

    static let interesting: [UInt8] = [0, 0x7F, 0x80, 0xFF, 0x0B, 0x0C, 9, 10, 13, 32, 58, 44, 59, 34, 47, 65, 97, 48, 57, 64, 35]

    mutating func mutate(_ bytes: inout [UInt8]) {
        guard !bytes.isEmpty else { return }
        let at = Int.random(in: 0..<bytes.count, using: &self.random)
        switch Int.random(in: 0..<8, using: &self.random) {
        case 0: bytes[at] = self.pick(Self.interesting)
        case 1: bytes.insert(self.pick(Self.interesting), at: at)
        case 2: bytes.remove(at: at)
        case 3:
            // CRLF → LF, or LF → CRLF somewhere.
            if let cr = bytes[at...].firstIndex(of: 13) { bytes.remove(at: cr) } else { bytes.insert(13, at: at) }
        case 4:
            // obs-fold: a continuation line.
            if let lf = bytes[at...].firstIndex(of: 10) { bytes.insert(contentsOf: Array(" folded\r\n".utf8), at: lf + 1) }
        case 5:
            // Space before a colon.
            if let colon = bytes[at...].firstIndex(of: 58) { bytes.insert(32, at: colon) }
        case 6:
            // Duplicate a line (duplicate Content-Length, Host, Transfer-Encoding...).
            if let lf = bytes[at...].firstIndex(of: 10), let start = bytes[..<at].lastIndex(of: 10) {
                bytes.insert(contentsOf: Array(bytes[(start + 1)...lf]), at: lf + 1)
            }
        default:
            bytes[at] = UInt8.random(in: 0...255, using: &self.random)
        }
    }
}

/// The request parser's own rules, beyond what llhttp shares with it.
@Suite struct HTTP1RequestParserTests {
    private static func events(_ parser: inout HTTP1RequestParser, _ buffer: inout ByteBuffer) throws -> [String] {
        var events: [String] = []
        while let event = try parser.next(&buffer) {
            switch event {
            case .head(let head, let keepAlive, _): events.append("head \(head.method) \(head.uri) \(keepAlive)")
            case .body(let body): events.append("body \(String(buffer: body))")
            case .end: events.append("end")
            }
        }
        return events
    }

    @Test func aHeadOverTheLimitIs431AndJunkIsRefusedBeforeItsLineEnds() throws {
        var parser = HTTP1RequestParser(maxHeadBytes: 64)
        var long = ByteBuffer(string: "GET / HTTP/1.1\r\nX-Long: " + String(repeating: "a", count: 80))
        #expect(throws: HTTP1Refusal.headTooLarge) { try Self.events(&parser, &long) }
        var junk = HTTP1RequestParser(maxHeadBytes: 1024)
        var bytes = ByteBuffer(string: "\u{0}\u{1}junk")
        #expect(throws: HTTP1Refusal.malformed) { try Self.events(&junk, &bytes) }
        var unfinished = HTTP1RequestParser(maxHeadBytes: 1024)
        var start = ByteBuffer(string: "POST /api/bookings HTTP/1.1\r\nHo")
        #expect(try Self.events(&unfinished, &start).isEmpty)
        #expect(start.readableBytes == 31, "an unfinished head stays unread")
    }

    @Test func emptyLinesBeforeARequestAreSkippedAndChunkedBodiesEnd() throws {
        var parser = HTTP1RequestParser(maxHeadBytes: 1024)
        var input = ByteBuffer(string: "\r\n\r\nPUT /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
        #expect(try Self.events(&parser, &input) == ["head PUT /a true", "body abc", "end"])
        #expect(parser.isBetweenRequests)
    }

    @Test func afterARequestNotKeptAliveOnlyEmptyLinesMayFollow() throws {
        var parser = HTTP1RequestParser(maxHeadBytes: 1024)
        var input = ByteBuffer(string: "GET /a HTTP/1.0\r\n\r\n\r\n")
        #expect(try Self.events(&parser, &input) == ["head GET /a false", "end"])
        var more = ByteBuffer(string: "GET /b HTTP/1.1\r\n\r\n")
        #expect(throws: HTTP1Refusal.malformed) { try Self.events(&parser, &more) }
    }

    @Test func aHeldParserLeavesTheBytesForLater() throws {
        var parser = HTTP1RequestParser(maxHeadBytes: 1024)
        var input = ByteBuffer(string: "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try Self.events(&parser, &input) == ["head GET /ws true", "end"])
        parser.hold()
        var frames = ByteBuffer(string: "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try Self.events(&parser, &frames).isEmpty)
        #expect(frames.readableBytes == 31)
        parser.resume()
        #expect(try Self.events(&parser, &frames) == ["head GET /next true", "end"])
    }

    @Test func onlyKnownMethodsAndOriginFormTargetsAreRead() throws {
        for line in ["CONNECT a:443 HTTP/1.1", "PROPFIND / HTTP/1.1", "get / HTTP/1.1", "GET * HTTP/1.1", "GET http://a/ HTTP/1.1",
                     "GET /\u{e9} HTTP/1.1", "GET / HTTP/1.2", "GET  / HTTP/1.1"] {
            var parser = HTTP1RequestParser(maxHeadBytes: 1024)
            var input = ByteBuffer(string: line + "\r\nHost: x\r\n\r\n")
            #expect(throws: HTTP1Refusal.malformed, "\(line)") { try Self.events(&parser, &input) }
        }
    }
}
