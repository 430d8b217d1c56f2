// A fake booking API standing in for the Node.js/Fastify services behind the gateway. Used by
// `make run`, the integration tests and the benchmarks. Besides the booking endpoints it has
// test hooks: echoing headers, streaming large bodies, misbehaving on purpose, and counters.
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Foundation
#if canImport(Glibc)
import Glibc
#endif

let bookingsBody = #"{"bookings":[{"id":"bk_1","barber":"Martin","service":"corte","starts_at":"2026-11-27T10:00-03:00","status":"confirmed"},{"id":"bk_2","barber":"Luca","service":"barba","starts_at":"2026-11-27T11:30-03:00","status":"pending"}]}"#
let barbersBody = #"{"barbers":[{"id":"b_1","name":"Martin","shop":"Palermo"},{"id":"b_2","name":"Luca","shop":"Belgrano"}]}"#

/// Counters exposed on `/__stats` so tests can see what reached the upstream.
final class Stats: Sendable {
    let connections = Atomic<Int>(0)
    let requests = Atomic<Int>(0)
    let openConnections = Atomic<Int>(0)
    /// Idle keep-alive connections closed by `--keepalive-timeout`.
    let keepaliveCloses = Atomic<Int>(0)
    /// POSTs received per request target, so a test can tell a booking that arrived twice.
    let posts = Mutex<[String: Int]>([:])

    func json() -> String {
        let posts = self.posts.withLock { $0 }.sorted { $0.key < $1.key }
            .map { #""\#(escape($0.key))":\#($0.value)"# }.joined(separator: ",")
        return #"{"connections":\#(self.connections.load(ordering: .relaxed)),"open_connections":\#(self.openConnections.load(ordering: .relaxed)),"requests":\#(self.requests.load(ordering: .relaxed)),"keepalive_closes":\#(self.keepaliveCloses.load(ordering: .relaxed)),"posts":{\#(posts)}}"#
    }
}

final class DemoHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Mode {
        case idle
        case collecting(HTTPRequestHead, ByteBuffer)
        case counting(HTTPRequestHead, Int, UInt64)
        case echoStream(HTTPRequestHead)
    }

    private let stats: Stats
    private let keepaliveTimeout: TimeAmount?
    private var idleTimer: Scheduled<Void>?
    private var mode = Mode.idle
    private var download: (remaining: Int, chunk: ByteBuffer)?
    private var keepAlive = true

    /// Ends the response, closing when the client asked for `Connection: close`.
    private func writeEnd(_ context: ChannelHandlerContext) {
        if self.keepAlive {
            // Armed first: writing the end may hand a pipelined request in, which disarms it.
            self.armIdleTimer(context)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            context.writeAndFlush(self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }

    init(stats: Stats, keepaliveTimeout: TimeAmount?) {
        self.stats = stats
        self.keepaliveTimeout = keepaliveTimeout
    }

    /// Closes the connection if no request starts within `--keepalive-timeout`, as Node.js does
    /// with its `keepAliveTimeout` (whatever a client may be sending at that instant).
    private func armIdleTimer(_ context: ChannelHandlerContext) {
        guard let timeout = self.keepaliveTimeout else { return }
        self.idleTimer?.cancel()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.idleTimer = context.eventLoop.scheduleTask(in: timeout) { [stats] in
            stats.keepaliveCloses.add(1, ordering: .relaxed)
            loopBound.value.close(promise: nil)
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.stats.connections.add(1, ordering: .relaxed)
        self.stats.openConnections.add(1, ordering: .relaxed)
        self.armIdleTimer(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.idleTimer?.cancel()
        self.stats.openConnections.subtract(1, ordering: .relaxed)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (self.unwrapInboundIn(data), self.mode) {
        case (.head(let head), _):
            self.idleTimer?.cancel()
            self.idleTimer = nil
            // The stats probe itself is not counted, so tests can compare counts exactly.
            if !head.uri.hasPrefix("/__stats") { self.stats.requests.add(1, ordering: .relaxed) }
            if head.method == .POST { self.stats.posts.withLock { $0[head.uri, default: 0] += 1 } }
            self.keepAlive = head.isKeepAlive
            let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
            if head.method == .POST && path == "/api/upload" {
                self.mode = .counting(head, 0, 14_695_981_039_346_656_037)
            } else if head.method == .POST && path == "/api/echo-stream" {
                self.mode = .echoStream(head)
                var headers = HTTPHeaders([("content-type", "application/octet-stream"), ("transfer-encoding", "chunked")])
                if let length = head.headers.first(name: "content-length") {
                    headers = HTTPHeaders([("content-type", "application/octet-stream"), ("content-length", length)])
                }
                context.writeAndFlush(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            } else {
                self.mode = .collecting(head, context.channel.allocator.buffer(capacity: 0))
            }
        case (.body(var body), .collecting(let head, var collected)):
            collected.writeBuffer(&body)
            self.mode = .collecting(head, collected)
        case (.body(let body), .counting(let head, let count, var hash)):
            body.withUnsafeReadableBytes { bytes in
                for byte in bytes { hash = (hash ^ UInt64(byte)) &* 1_099_511_628_211 }
            }
            self.mode = .counting(head, count + body.readableBytes, hash)
        case (.body(let body), .echoStream):
            context.writeAndFlush(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        case (.end, .collecting(let head, let body)):
            self.mode = .idle
            self.respond(context: context, head: head, body: body)
        case (.end, .counting(_, let count, let hash)):
            self.mode = .idle
            self.send(context: context, status: .ok, json: #"{"bytes":\#(count),"fnv1a":"\#(String(hash, radix: 16))"}"#)
        case (.end, .echoStream):
            self.mode = .idle
            self.writeEnd(context)
        default:
            break
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, body: ByteBuffer) {
        let parts = head.uri.split(separator: "?", maxSplits: 1)
        let path = String(parts.first ?? "")
        let query = parts.count > 1 ? String(parts[1]) : ""
        let params = Dictionary(
            query.split(separator: "&").map { pair -> (String, String) in
                let kv = pair.split(separator: "=", maxSplits: 1)
                return (String(kv[0]), kv.count > 1 ? String(kv[1]) : "")
            }, uniquingKeysWith: { a, _ in a }
        )
        let delay = Int(params["delay_ms"] ?? "") ?? 0
        if delay > 0 {
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .milliseconds(Int64(delay))) {
                let (handler, context) = loopBound.value
                handler.route(context: context, head: head, path: path, params: params, body: body)
            }
        } else {
            self.route(context: context, head: head, path: path, params: params, body: body)
        }
    }

    private func route(
        context: ChannelHandlerContext, head: HTTPRequestHead, path: String, params: [String: String], body: ByteBuffer
    ) {
        switch (head.method, path) {
        case (_, "/health"):
            self.send(context: context, status: .ok, json: #"{"status":"ok"}"#)
        case (.GET, "/api/bookings"), (.HEAD, "/api/bookings"):
            self.send(context: context, status: .ok, json: bookingsBody, head: head.method == .HEAD)
        case (.GET, "/api/barbers"):
            self.send(context: context, status: .ok, json: barbersBody)
        case (.POST, "/api/bookings"):
            let contentType = head.headers.first(name: "content-type") ?? "application/octet-stream"
            var headers = HTTPHeaders([("content-type", contentType), ("content-length", String(body.readableBytes))])
            headers.add(name: "x-demo-upstream", value: "booking")
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .created, headers: headers))), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            self.writeEnd(context)
        case (_, "/api/echo-headers"):
            var json = #"{"method":"\#(head.method.rawValue)","uri":"\#(escape(head.uri))","body_bytes":\#(body.readableBytes),"headers":["#
            json += head.headers.map { #"["\#(escape($0.name))","\#(escape($0.value))"]"# }.joined(separator: ",")
            json += "]}"
            self.send(context: context, status: .ok, json: json)
        case (.GET, "/api/download"):
            let total = Int(params["bytes"] ?? "") ?? 1_048_576
            var chunk = context.channel.allocator.buffer(capacity: 65536)
            chunk.writeRepeatingByte(UInt8(ascii: "x"), count: 65536)
            let chunked = params["chunked"] == "1"
            let headers = chunked
                ? HTTPHeaders([("content-type", "application/octet-stream"), ("transfer-encoding", "chunked")])
                : HTTPHeaders([("content-type", "application/octet-stream"), ("content-length", String(total))])
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            self.download = (total, chunk)
            self.pumpDownload(context: context)
        case (_, "/api/vary"):
            // Its own Vary and CORS field: the gateway must merge the first and own the second.
            self.send(
                context: context, status: .ok, json: #"{"vary":true}"#,
                extraHeaders: [("vary", "Accept-Encoding"), ("access-control-allow-origin", "*")]
            )
        case (_, let cacheable) where cacheable.hasPrefix("/api/cacheable"):
            // Caching fields on demand (cc, vary, cookie=1, code), a body naming the request's
            // number so a test tells a stored answer from a fresh one.
            var fields: [(String, String)] = []
            if let cc = params["cc"]?.removingPercentEncoding { fields.append(("cache-control", cc)) }
            if let vary = params["vary"] { fields.append(("vary", vary)) }
            if params["cookie"] == "1" { fields.append(("set-cookie", "session=abc; Path=/")) }
            let varied = params["vary"].flatMap { head.headers.first(name: $0) } ?? ""
            let number = self.stats.requests.load(ordering: .relaxed)
            self.send(
                context: context, status: HTTPResponseStatus(statusCode: Int(params["code"] ?? "") ?? 200),
                json: #"{"n":\#(number),"varied":"\#(escape(varied))","pad":"\#(String(repeating: "p", count: Int(params["pad"] ?? "") ?? 0))"}"#,
                head: head.method == .HEAD, extraHeaders: fields
            )
        case (_, "/api/status"):
            let code = Int(params["code"] ?? "") ?? 200
            self.send(context: context, status: HTTPResponseStatus(statusCode: code), json: #"{"status":\#(code)}"#)
        case (_, "/api/hostile-headers"):
            // Fields a proxy must not pass on (hop-by-hop, named by Connection, a forged request id)
            // next to ones it must keep as they are (its own HSTS, a padded value trimmed).
            self.writeRaw(
                context: context,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive, X-Upstream-Secret\r\n"
                    + "X-Upstream-Secret: leak\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n"
                    + "X-Request-Id: forged-by-upstream\r\nStrict-Transport-Security: max-age=1\r\nX-Kept:   padded value  \r\n"
                    + "Content-Length: 2\r\n\r\n{}"
            )
        case (_, "/api/bad-framing"):
            self.writeRaw(context: context, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello")
        case (_, "/api/bad-chunk"):
            self.writeRaw(context: context, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
        case (_, "/api/odd-response"):
            // Responses outside the strict grammar the gateway reads upstreams in (answered 502),
            // and an interim response before the final one (dropped).
            let odd = [
                "te-tab": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "folded": "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",
                "bare-lf": "HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
                "chunk-ext": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=1\r\n{}\r\n0\r\n\r\n",
                "interim": "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            ]
            self.writeRaw(context: context, odd[params["kind"] ?? ""] ?? "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        case (_, "/api/close-early"):
            context.close(promise: nil)
        case (_, "/__stats"):
            self.send(context: context, status: .ok, json: self.stats.json())
        default:
            self.send(context: context, status: .notFound, json: #"{"error":"not found in demo upstream"}"#)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.pumpDownload(context: context) }
        context.fireChannelWritabilityChanged()
    }

    /// Streams the download while the socket takes it, so the demo itself respects backpressure.
    private func pumpDownload(context: ChannelHandlerContext) {
        guard var download = self.download else { return }
        while download.remaining > 0 && context.channel.isWritable {
            let size = min(download.remaining, download.chunk.readableBytes)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(download.chunk.getSlice(at: 0, length: size)!))), promise: nil)
            download.remaining -= size
        }
        if download.remaining == 0 {
            self.download = nil
            self.writeEnd(context)
        } else {
            self.download = download
            context.flush()
        }
    }

    private func writeRaw(context: ChannelHandlerContext, _ text: String) {
        guard let encoderContext = try? context.pipeline.syncOperations.context(handlerType: HTTPResponseEncoder.self) else { return }
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        encoderContext.writeAndFlush(NIOAny(IOData.byteBuffer(buffer)), promise: nil)
    }

    private func send(
        context: ChannelHandlerContext, status: HTTPResponseStatus, json: String, head: Bool = false,
        extraHeaders: [(String, String)] = []
    ) {
        var buffer = context.channel.allocator.buffer(capacity: json.utf8.count)
        buffer.writeString(json)
        var headers = HTTPHeaders([("content-type", "application/json"), ("content-length", String(buffer.readableBytes))])
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if !head { context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil) }
        self.writeEnd(context)
    }
}

func escape(_ s: String) -> String {
    var out = ""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out
}

/// `250ms`, `5s` or `5` (seconds).
func parseDuration(_ text: String) -> TimeAmount? {
    if text.hasSuffix("ms") { return Int64(text.dropLast(2)).flatMap { $0 >= 0 ? .milliseconds($0) : nil } }
    let seconds = text.hasSuffix("s") ? text.dropLast() : Substring(text)
    guard let value = Double(seconds), value >= 0 else { return nil }
    return .nanoseconds(Int64(value * 1e9))
}

// Arguments: --host H (default 127.0.0.1) --port P (default 3001; 0 = ephemeral) --threads N
// --keepalive-timeout DURATION (idle keep-alive connections are closed after it; default: never)
let usage = "usage: demo-upstream [--host H] [--port P] [--threads N] [--keepalive-timeout DURATION]\n"
var host = "127.0.0.1"
var port = 3001
var threads = 1
var keepaliveTimeout: TimeAmount?
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let argument = arguments.next() {
    switch argument {
    case "--host": host = arguments.next() ?? host
    case "--port": port = Int(arguments.next() ?? "") ?? port
    case "--threads": threads = Int(arguments.next() ?? "") ?? threads
    case "--keepalive-timeout":
        guard let value = arguments.next().flatMap(parseDuration) else {
            FileHandle.standardError.write(Data(usage.utf8))
            exit(2)
        }
        keepaliveTimeout = value
    default:
        FileHandle.standardError.write(Data(usage.utf8))
        exit(2)
    }
}

let stats = Stats()
let idleTimeout = keepaliveTimeout
let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
let channel = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 1024)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(DemoHandler(stats: stats, keepaliveTimeout: idleTimeout))
        }
    }
    .bind(host: host, port: port).wait()
FileHandle.standardOutput.write(Data("demo-upstream listening on \(host):\(channel.localAddress?.port ?? port)\n".utf8))
try channel.closeFuture.wait()
