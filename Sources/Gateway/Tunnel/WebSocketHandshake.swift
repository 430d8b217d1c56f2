import NIOCore
import NIOHTTP1
private import COpenSSL

/// The RFC 6455 opening handshake as the gateway relays it: the client's request goes upstream
/// with its `Sec-WebSocket-*` fields and `Upgrade: websocket`, and only a 101 that proves the
/// upstream read this very key (`Sec-WebSocket-Accept`, §4.2.2) turns the connection into a tunnel.
struct WebSocketHandshake: Sendable {
    /// `Sec-WebSocket-Accept` the upstream must answer with.
    let expectedAccept: String
    let routeName: String
    let idleTimeout: TimeAmount

    /// A WebSocket opening handshake (§4.1): GET, HTTP/1.1, `Upgrade: websocket`, `Connection`
    /// listing `upgrade`, version 13 and a key. Anything else on a `websocket: true` route is
    /// served as a plain request, with `Upgrade` dropped like on any route. An HTTP/2 head has these
    /// fields only as an extended CONNECT turned into a handshake (nghttp2 resets streams that send
    /// `Upgrade` or `Connection`).
    init?(_ head: RequestHead, routeName: String, idleTimeout: TimeAmount) {
        guard head.method == .GET, head.version == .http1_1 || head.version == .http2,
            head.headers["upgrade"].contains(where: { Substring($0).trimmingSpaces.lowercased() == "websocket" }),
            head.headers["connection"].contains(where: { $0.containsListElement("upgrade") }),
            head.headers.first(name: "sec-websocket-version").map { Substring($0).trimmingSpaces } == "13",
            let key = head.headers.first(name: "sec-websocket-key").map({ Substring($0).trimmingSpaces }), !key.isEmpty
        else { return nil }
        self.expectedAccept = Self.accept(forKey: String(key))
        self.routeName = routeName
        self.idleTimeout = idleTimeout
    }

    /// Whether an upstream 101 completes this handshake.
    func accepts(_ head: HTTPResponseHead) -> Bool {
        head.status == .switchingProtocols
            && head.headers["upgrade"].contains { Substring($0).trimmingSpaces.lowercased() == "websocket" }
            && head.headers.first(name: "sec-websocket-accept").map { Substring($0).trimmingSpaces } == Substring(self.expectedAccept)
    }

    /// The head relayed upstream: the rewritten request plus the two hop-by-hop fields that ask
    /// this next hop to switch.
    static func upstreamHead(_ rewritten: HTTPRequestHead) -> HTTPRequestHead {
        var head = rewritten
        head.headers.replaceOrAdd(name: "connection", value: "upgrade")
        head.headers.replaceOrAdd(name: "upgrade", value: "websocket")
        head.headers.remove(name: "content-length")
        head.headers.remove(name: "transfer-encoding")
        return head
    }

    /// The 101 sent to the client: the upstream's end-to-end fields (protocol, extensions,
    /// accept) with the switch re-announced for this hop.
    static func clientHead(_ upstream: HTTPResponseHead, requestID: String) -> HTTPResponseHead {
        var headers = HTTPHeaders()
        for (name, value) in upstream.headers where !HeaderRewriter.isHopByHop(name) {
            if name.equalsIgnoringASCIICase("content-length") || name.equalsIgnoringASCIICase("transfer-encoding") { continue }
            headers.add(name: name, value: value)
        }
        headers.replaceOrAdd(name: "upgrade", value: "websocket")
        headers.replaceOrAdd(name: "connection", value: "upgrade")
        headers.replaceOrAdd(name: "x-request-id", value: requestID)
        return HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: headers)
    }

    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// base64(SHA-1(key + GUID)), RFC 6455 §4.2.2 item 5.
    static func accept(forKey key: String) -> String {
        let input = Array((key + Self.guid).utf8)
        var digest = [UInt8](repeating: 0, count: 20)
        var length: UInt32 = 0
        _ = input.withUnsafeBytes { bytes in
            EVP_Digest(bytes.baseAddress, bytes.count, &digest, &length, EVP_sha1(), nil)
        }
        return Base64.encode(digest)
    }
}

/// Standard base64 with padding (RFC 4648 §4), for `Sec-WebSocket-Accept`.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let b0 = bytes[index], b1 = index + 1 < bytes.count ? bytes[index + 1] : 0
            let b2 = index + 2 < bytes.count ? bytes[index + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(index + 1 < bytes.count ? alphabet[Int((b1 & 0x0f) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(index + 2 < bytes.count ? alphabet[Int(b2 & 0x3f)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension WebSocketHandshake {
    /// The handshake to relay for `head` on `route`, or nil when the route has no `websocket: true`
    /// or the request is no WebSocket handshake (it is then proxied like any request).
    static func forRoute(_ route: Route, head: RequestHead, runtime: GatewayRuntime) -> WebSocketHandshake? {
        guard route.realtime.websocket else { return nil }
        let idle = route.realtime.tunnelIdle.map(TimeAmount.init) ?? runtime.traffic.tunnelIdleTimeout
        return WebSocketHandshake(head, routeName: route.name, idleTimeout: idle)
    }

    /// Browsers send `Origin` on every WebSocket handshake but apply no CORS to it (RFC 6455
    /// §10.2): on a route with CORS the gateway refuses an origin the policy does not allow,
    /// before anything reaches the upstream.
    static func originRefusal(_ route: Route, head: RequestHead) -> GatewayError? {
        guard let cors = route.cors, head.headers.contains(name: "origin") else { return nil }
        return cors.allowedOrigin(head.headers) == nil ? .corsRejected : nil
    }
}

extension DownstreamResponder {
    /// Responders that cannot tunnel (an HTTP/2 stream) never relay such a handshake; if one gets
    /// here, the upstream connection is dropped and the response aborted.
    func upgradeToTunnel(for exchange: RequestExchange, _ head: HTTPResponseHead, upstream connection: UpstreamConnection) {
        connection.close()
        self.abortResponse(for: exchange)
    }
}

extension WebSocketHandshake {
    /// An RFC 8441 extended CONNECT becomes the HTTP/1.1 handshake the upstream understands:
    /// `GET` with `Upgrade`/`Connection` and a fresh `Sec-WebSocket-Key` (HTTP/2 carries none; the
    /// upstream's accept is checked against this one), the version kept from the client.
    static func addHTTP1Fields(to headers: inout HeadFields, method: inout HTTPMethod) {
        method = .GET
        var generator = SystemRandomNumberGenerator()
        let nonce = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        headers.replaceOrAdd(name: "upgrade", value: "websocket")
        headers.replaceOrAdd(name: "connection", value: "upgrade")
        headers.replaceOrAdd(name: "sec-websocket-key", value: Base64.encode(nonce))
        if !headers.contains(name: "sec-websocket-version") { headers.add(name: "sec-websocket-version", value: "13") }
    }

    /// The 200 that answers an extended CONNECT: the upstream's end-to-end fields (subprotocol,
    /// extensions), without the HTTP/1.1 switch and its accept proof, which mean nothing on HTTP/2.
    static func extendedConnectResponseFields(_ upstream: HTTPResponseHead) -> HTTPHeaders {
        var headers = HTTPHeaders()
        for (name, value) in upstream.headers where !HeaderRewriter.isHopByHop(name) {
            let lower = name.lowercased()
            if lower == "sec-websocket-accept" || lower == "content-length" || HeaderRewriter.connectionSpecific.contains(lower) {
                continue
            }
            headers.add(name: lower, value: value)
        }
        return headers
    }
}
