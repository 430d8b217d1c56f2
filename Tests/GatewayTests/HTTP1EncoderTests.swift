import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
@testable import Gateway

/// `KeptHeadFraming` (the encoding inside `HTTP1ServerHandler` and `UpstreamConnectionHandler`)
/// write what NIO's `HTTPResponseEncoder` and `HTTPRequestEncoder` (framing fields left to the
/// caller) write, byte for byte, while reusing one head buffer per connection.
@Suite struct HTTP1EncoderTests {
    static func responses() -> [[HTTPServerResponsePart]] {
        var chunked = HTTPHeaders([("Transfer-Encoding", "chunked"), ("X-Request-Id", "abc")])
        let body = ByteBuffer(string: "hello, world")
        var plain = HTTPHeaders([("Content-Length", "12"), ("Content-Type", "text/plain; charset=utf-8")])
        plain.add(name: "strict-transport-security", value: "max-age=31536000; includeSubDomains")
        chunked.add(name: "Vary", value: "Origin")
        return [
            [.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: plain)), .body(.byteBuffer(body)), .end(nil)],
            [.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: chunked)), .body(.byteBuffer(body)),
             .body(.byteBuffer(ByteBuffer())), .body(.byteBuffer(body)), .end(nil)],
            [.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: chunked)), .body(.byteBuffer(body)),
             .end(HTTPHeaders([("X-Trailer", "1")]))],
            // HTTP/1.0 never chunks, whatever the fields say.
            [.head(HTTPResponseHead(version: .http1_0, status: .notFound, headers: chunked)), .body(.byteBuffer(body)), .end(nil)],
            [.head(HTTPResponseHead(version: .http1_1, status: .custom(code: 599, reasonPhrase: "Odd"), headers: [:])), .end(nil)],
            [.head(HTTPResponseHead(version: .http1_1, status: .badGateway, headers: ["transfer-encoding": "gzip, chunked"])),
             .body(.byteBuffer(body)), .end(nil)],
        ]
    }

    static func requests() -> [[HTTPClientRequestPart]] {
        let body = ByteBuffer(string: "{\"a\":1}")
        return [
            [.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/api/bookings?id=1", headers: ["Host": "a", "X-Forwarded-For": "1.2.3.4"])),
             .end(nil)],
            [.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/api", headers: ["Host": "a", "Content-Length": "7"])),
             .body(.byteBuffer(body)), .end(nil)],
            [.head(HTTPRequestHead(version: .http1_1, method: .PUT, uri: "/api", headers: ["Host": "a", "Transfer-Encoding": "chunked"])),
             .body(.byteBuffer(body)), .body(.byteBuffer(body)), .end(nil)],
            [.head(HTTPRequestHead(version: .http1_0, method: .RAW(value: "PROPFIND"), uri: "/dav", headers: [:])), .end(nil)],
        ]
    }

    @Test(arguments: [false, true])
    func requestsSameBytesAsNIO(flushEach: Bool) throws {
        var configuration = HTTPRequestEncoder.Configuration()
        configuration.automaticallySetFramingHeaders = false
        let requests = Self.requests()
        let ours = try Self.encode(requests, with: RequestFramingHandler(), flushEach: flushEach)
        let nio = try Self.encode(requests, with: HTTPRequestEncoder(configuration: configuration), flushEach: flushEach)
        #expect(String(decoding: ours, as: UTF8.self) == String(decoding: nio, as: UTF8.self))
    }

    static func encode<Part>(_ responses: [[Part]], with encoder: ChannelHandler, flushEach: Bool) throws -> [UInt8] {
        let channel = EmbeddedChannel(handler: encoder)
        for response in responses {
            for part in response { channel.write(part, promise: nil) }
            if flushEach { channel.flush() }
        }
        channel.flush()
        var bytes: [UInt8] = []
        while let buffer = try channel.readOutbound(as: IOData.self) {
            if case .byteBuffer(let buffer) = buffer { bytes += buffer.readableBytesView }
        }
        _ = try channel.finish()
        return bytes
    }

    @Test(arguments: [false, true])
    func sameBytesAsNIO(flushEach: Bool) throws {
        var configuration = HTTPResponseEncoder.Configuration()
        configuration.automaticallySetFramingHeaders = false
        let responses = Self.responses()
        let ours = try Self.encode(responses, with: ResponseFramingHandler(), flushEach: flushEach)
        let nio = try Self.encode(responses, with: HTTPResponseEncoder(configuration: configuration), flushEach: flushEach)
        #expect(String(decoding: ours, as: UTF8.self) == String(decoding: nio, as: UTF8.self))
    }

    /// A head still held below (not yet written out) is never overwritten by the next one.
    @Test func aHeldHeadIsNotReused() throws {
        let channel = EmbeddedChannel(handler: ResponseFramingHandler())
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["A": "1"])), promise: nil)
        channel.flush()
        let first = try #require(try channel.readOutbound(as: IOData.self))
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .notFound, headers: ["B": "2"])), promise: nil)
        channel.flush()
        let second = try #require(try channel.readOutbound(as: IOData.self))
        guard case .byteBuffer(let firstBytes) = first, case .byteBuffer(let secondBytes) = second else {
            Issue.record("not byte buffers")
            return
        }
        #expect(String(buffer: firstBytes) == "HTTP/1.1 200 OK\r\nA: 1\r\n\r\n")
        #expect(String(buffer: secondBytes) == "HTTP/1.1 404 Not Found\r\nB: 2\r\n\r\n")
        _ = try channel.finish()
    }
}

/// `HTTP1ServerHandler`'s response writing on its own: each part through one `KeptHeadFraming`.
private final class ResponseFramingHandler: ChannelOutboundHandler {
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = IOData
    private var framing = KeptHeadFraming()

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        self.framing.writeResponse(Self.unwrapOutboundIn(data), context: context, promise: promise)
    }
}

/// `UpstreamConnectionHandler`'s request writing, fed by the pipeline instead of `send`.
private final class RequestFramingHandler: ChannelOutboundHandler {
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = IOData
    private let upstream = UpstreamConnectionHandler()

    func handlerAdded(context: ChannelHandlerContext) { self.upstream.handlerAdded(context: context) }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        self.upstream.send(Self.unwrapOutboundIn(data), flush: false, promise: promise)
    }
}
