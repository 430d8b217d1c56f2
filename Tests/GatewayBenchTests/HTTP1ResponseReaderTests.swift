import NIOCore
import Testing
@testable import GatewayBench

@Suite struct HTTP1ResponseReaderTests {
    typealias Response = HTTP1ResponseReader.Response

    /// Feeds `chunks` one read at a time; returns the response and the read it completed on.
    func feed(_ chunks: [String], head: Bool = false) throws -> (Response?, Int?) {
        var reader = HTTP1ResponseReader()
        reader.expect(head: head)
        for (index, chunk) in chunks.enumerated() {
            var buffer = ByteBuffer(string: chunk)
            if let response = try reader.read(&buffer) {
                #expect(buffer.readableBytes == 0)
                return (response, index)
            }
        }
        return (nil, nil)
    }

    /// Every split of `text` into two reads gives the same response, on the second read.
    func everySplit(_ text: String, head: Bool = false) throws -> Set<Int> {
        var statuses = Set<Int>()
        let bytes = Array(text.utf8)
        for cut in 1..<bytes.count {
            let (response, read) = try self.feed([String(decoding: bytes[..<cut], as: UTF8.self), String(decoding: bytes[cut...], as: UTF8.self)], head: head)
            #expect(read == 1, "cut at \(cut)")
            if let response { statuses.insert(response.status) }
        }
        return statuses
    }

    @Test func contentLengthBodyEndsTheResponse() throws {
        let text = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello"
        #expect(try self.feed([text]).0 == Response(status: 200, keepAlive: true))
        #expect(try self.everySplit(text) == [200])
        // One byte short: not complete.
        #expect(try self.feed([String(text.dropLast())]).0 == nil)
    }

    @Test func chunkedBodyWithExtensionsAndTrailers() throws {
        let text = "HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n"
        #expect(try self.feed([text]).0 == Response(status: 201, keepAlive: true))
        #expect(try self.everySplit(text) == [201])
        #expect(try self.feed([String(text.dropLast(2))]).0 == nil)
    }

    @Test func bodilessResponses() throws {
        // HEAD: the framing fields describe the GET's body, which is not sent.
        #expect(try self.feed(["HTTP/1.1 200 OK\r\ncontent-length: 226\r\n\r\n"], head: true).0 == Response(status: 200, keepAlive: true))
        #expect(try self.feed(["HTTP/1.1 204 No Content\r\n\r\n"]).0 == Response(status: 204, keepAlive: true))
        #expect(try self.feed(["HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"]).0 == Response(status: 304, keepAlive: true))
        #expect(try self.feed(["HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]).0 == Response(status: 200, keepAlive: true))
    }

    @Test func interimResponsesAreSkipped() throws {
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        #expect(try self.feed([text]).0 == Response(status: 200, keepAlive: true))
        #expect(try self.everySplit(text) == [200])
    }

    @Test func connectionPersistence() throws {
        #expect(try self.feed(["HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"]).0?.keepAlive == false)
        #expect(try self.feed(["HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"]).0?.keepAlive == false)
        #expect(try self.feed(["HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"]).0?.keepAlive == true)
        // Not keep-alive for HTTP/1.1: the token only matters to 1.0.
        #expect(try self.feed(["HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"]).0?.keepAlive == true)
    }

    @Test func bodyDelimitedByTheCloseEndsAtEndOfInput() throws {
        var reader = HTTP1ResponseReader()
        reader.expect(head: false)
        var buffer = ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\nsome body")
        #expect(try reader.read(&buffer) == nil)
        var more = ByteBuffer(string: " and more")
        #expect(try reader.read(&more) == nil)
        #expect(reader.endOfInput() == Response(status: 200, keepAlive: false))

        // A message cut off mid-body is not a response.
        var cut = HTTP1ResponseReader()
        cut.expect(head: false)
        var partial = ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        #expect(try cut.read(&partial) == nil)
        #expect(cut.endOfInput() == nil)
    }

    @Test func malformedResponsesAreErrors() {
        let bad = [
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 20x OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        ]
        for text in bad {
            #expect(throws: HTTP1ResponseError.self, "\(text.debugDescription)") { _ = try self.feed([text]) }
        }
        // Bytes nobody asked for.
        var idle = HTTP1ResponseReader()
        var buffer = ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n")
        #expect(throws: HTTP1ResponseError.self) { _ = try idle.read(&buffer) }
    }

    @Test func anEndlessHeadIsRefused() throws {
        var reader = HTTP1ResponseReader()
        reader.expect(head: false)
        var first = ByteBuffer(string: "HTTP/1.1 200 OK\r\n")
        #expect(try reader.read(&first) == nil)
        let field = "x-filler: " + String(repeating: "a", count: 1000) + "\r\n"
        #expect(throws: HTTP1ResponseError.self) {
            for _ in 0..<100 {
                var more = ByteBuffer(string: field)
                _ = try reader.read(&more)
            }
        }
    }

    @Test func requestsAreEncodedOnceWithTheirFraming() {
        var post = BenchRequest(name: "create", method: "POST", path: "/api/bookings?x=1", headers: [BenchHeader("Host", "barberpro.test")], body: Array("{}".utf8))
        var bytes = HTTP1BenchConnection.encode(post, authority: "127.0.0.1:8443")
        #expect(bytes.readString(length: bytes.readableBytes) ==
            "POST /api/bookings?x=1 HTTP/1.1\r\nuser-agent: gateway-bench\r\nHost: barberpro.test\r\ncontent-length: 2\r\n\r\n{}")
        post = BenchRequest(name: "get", path: "/")
        bytes = HTTP1BenchConnection.encode(post, authority: "[::1]:8080")
        #expect(bytes.readString(length: bytes.readableBytes) == "GET / HTTP/1.1\r\nhost: [::1]:8080\r\nuser-agent: gateway-bench\r\n\r\n")
    }

    @Test func headerValuesAndPathsCannotSplitTheRequest() throws {
        #expect(throws: BenchError.self) { _ = try BenchHeader(parsing: "x-a: 1\r\nx-b: 2") }
        #expect(throws: BenchError.self) { _ = try BenchTarget(parsing: "http://127.0.0.1:8080/a b") }
        #expect(throws: BenchError.self) { _ = try BenchTarget(parsing: "http://127.0.0.1:8080/a\r\nx: y") }
        #expect(throws: BenchError.self) { _ = try BenchTarget(parsing: "http://127.0.0.1:8080/a\tb") }
        #expect(throws: BenchError.self) { _ = try BenchHeader(parsing: "x-a: 1\u{0}") }
        #expect(try BenchHeader(parsing: "x-a: a\tb").value == "a\tb")
        #expect(try BenchTarget(parsing: "http://127.0.0.1:8080/a%20b?c=d").path == "/a%20b?c=d")
    }
}
