import NIOHTTP1
import Testing

@testable import Gateway

@Suite("Routing precedence")
struct RoutingTests {
    let table = RouteTable([
        Route(name: "any-api", host: nil, pathPrefix: "/api/", methods: nil, upstreamName: "u", order: 0),
        Route(name: "login", host: nil, pathPrefix: "/api/auth/login", methods: ["POST"], upstreamName: "u", order: 1),
        Route(name: "wild", host: "*.barberpro.com.ar", pathPrefix: "/api/", methods: nil, upstreamName: "u", order: 2),
        Route(name: "admin", host: "admin.barberpro.com.ar", pathPrefix: "/api/", methods: ["GET"], upstreamName: "u", order: 3),
        Route(name: "first", host: nil, pathPrefix: "/same", methods: nil, upstreamName: "u", order: 4),
        Route(name: "second", host: nil, pathPrefix: "/same", methods: nil, upstreamName: "u", order: 5),
        Route(name: "only-post", host: nil, pathPrefix: "/hooks", methods: ["POST", "PUT"], upstreamName: "u", order: 6),
    ])

    func name(_ host: String?, _ path: Substring, _ method: String) -> String {
        switch table.match(host: host, path: path, method: method) {
        case .matched(let route): route.name
        case .methodNotAllowed(let allow): "405 " + allow.joined(separator: ",")
        case .notFound: "404"
        }
    }

    @Test func exactHostBeatsWildcardBeatsAny() {
        #expect(name("admin.barberpro.com.ar", "/api/x", "GET") == "admin")
        #expect(name("ADMIN.barberpro.com.ar:8443", "/api/x", "GET") == "admin")
        #expect(name("shop.barberpro.com.ar", "/api/x", "GET") == "wild")
        #expect(name("barberpro.com.ar", "/api/x", "GET") == "any-api")
        #expect(name("evilbarberpro.com.ar", "/api/x", "GET") == "any-api")
    }

    @Test func exactHostFallsBackWhenItsMethodMisses() {
        // admin is GET-only, but the wildcard route takes POST for the same host.
        #expect(name("admin.barberpro.com.ar", "/api/x", "POST") == "wild")
    }

    @Test func longestPrefixThenFileOrder() {
        #expect(name(nil, "/api/auth/login", "POST") == "login")
        #expect(name(nil, "/api/auth/login/sub", "POST") == "login")
        #expect(name(nil, "/api/auth/login2", "POST") == "any-api")
        #expect(name(nil, "/api/auth/login", "GET") == "any-api")
        #expect(name(nil, "/same/x", "GET") == "first")
    }

    @Test func methodNotAllowedOnlyWhenNoRouteTakesTheMethod() {
        #expect(name(nil, "/hooks/a", "GET") == "405 POST,PUT")
        #expect(name(nil, "/hooks/a", "PUT") == "only-post")
        #expect(name(nil, "/nothing", "GET") == "404")
    }
}

@Suite("Request validation")
struct RequestValidationTests {
    func head(_ headers: [(String, String)], uri: String = "/api/x", version: HTTPVersion = .http1_1) -> RequestHead {
        RequestHead(HTTPRequestHead(version: version, method: .POST, uri: uri, headers: HTTPHeaders(headers)))
    }

    func framing(_ h: RequestHead) -> BodyFraming? { try? RequestValidator.validate(h).get() }

    @Test func framingOutcomes() {
        #expect(framing(head([("Host", "a")])) == BodyFraming.none)
        #expect(framing(head([("Host", "a"), ("Content-Length", "12")])) == .contentLength(12))
        #expect(framing(head([("Host", "a"), ("Content-Length", "5"), ("Content-Length", "5")])) == .contentLength(5))
        #expect(framing(head([("Host", "a"), ("Transfer-Encoding", "Chunked")])) == .chunked)
    }

    @Test func ambiguousFramingRefused() {
        let bad: [[(String, String)]] = [
            [("Host", "a"), ("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            [("Host", "a"), ("Content-Length", "5"), ("Content-Length", "6")],
            [("Host", "a"), ("Content-Length", "5, 6")],
            [("Host", "a"), ("Content-Length", "-1")],
            [("Host", "a"), ("Transfer-Encoding", "gzip, chunked")],
            [("Host", "a"), ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
            [("Host", "a"), ("X-Bad", "a\u{0}b")],
            [("Host", "a"), ("Bad Name", "x")],
            [],
            [("Host", "a"), ("Host", "b")],
        ]
        for headers in bad { #expect(framing(head(headers)) == nil, "\(headers)") }
        #expect(framing(head([("Transfer-Encoding", "chunked")], version: .http1_0)) == nil)
    }

    @Test func pathsWithDotSegmentsRefused() {
        for path in ["/api/../admin", "/api/./x", "/api/%2e%2e/admin", "/api/%2E./x", "/api/..", "/a%00b", "/a\\b", "/a%zz"] {
            #expect(RequestValidator.pathProblem(path) != nil, "\(path)")
        }
        for path in ["/api/x", "/api/..x", "/api/x.y/z", "/api/%20", "/api/x?y=../z", "/.well-known/x"] {
            #expect(RequestValidator.pathProblem(path) == nil, "\(path)")
        }
    }
}

@Suite("Header rewriting")
struct HeaderRewritingTests {
    let info = ForwardingInfo(peer: "203.0.113.7", requestID: "rid-1", scheme: "https", host: "api.barberpro.com.ar", fallbackHost: "10.0.0.1:3001")

    @Test func upstreamRequestDropsHopByHopAndSpoofedFields() {
        let head = RequestHead(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/api/x?y=1", headers: HTTPHeaders([
            ("Host", "api.barberpro.com.ar"), ("Connection", "keep-alive, X-Private"), ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Upgrade", "h2c"), ("Expect", "100-continue"),
            ("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=6.6.6.6"), ("X-Real-IP", "6.6.6.6"),
            ("CF-Connecting-IP", "6.6.6.6"), ("X-Request-Id", "spoof"), ("Transfer-Encoding", "chunked"),
            ("Content-Type", "application/json"),
        ])))
        let out = HeaderRewriter.upstreamRequest(head, framing: .chunked, info: info)
        let names = Set(out.headers.map { $0.name.lowercased() })
        for gone in ["connection", "x-private", "keep-alive", "te", "upgrade", "expect", "forwarded", "x-real-ip", "cf-connecting-ip"] {
            #expect(!names.contains(gone), "\(gone)")
        }
        #expect(out.headers["x-forwarded-for"] == ["203.0.113.7"])
        #expect(out.headers["x-forwarded-proto"] == ["https"])
        #expect(out.headers["x-forwarded-host"] == ["api.barberpro.com.ar"])
        #expect(out.headers["x-request-id"] == ["rid-1"])
        #expect(out.headers["transfer-encoding"] == ["chunked"])
        #expect(out.headers["content-type"] == ["application/json"])
        #expect(out.uri == "/api/x?y=1" && out.version == .http1_1)
    }

    @Test func trustedPeerKeepsTheChainAndAppendsItself() {
        let head = RequestHead(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/api/x", headers: HTTPHeaders([
            ("Host", "api.barberpro.com.ar"), ("X-Forwarded-For", "198.51.100.9"), ("X-Forwarded-For", " 10.0.0.2 "),
            ("CF-Connecting-IP", "198.51.100.9"), ("X-Real-IP", "198.51.100.9"), ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "evil"), ("X-User-Id", "spoofed"),
        ])))
        var trusted = info
        trusted.peer = "173.245.48.1"
        trusted.peerTrusted = true
        trusted.addedHeaders = [("x-user-id", "u-1")]
        let out = HeaderRewriter.upstreamRequest(head, framing: .none, info: trusted, removing: ["x-user-id"])
        #expect(out.headers["x-forwarded-for"] == ["198.51.100.9, 10.0.0.2, 173.245.48.1"])
        #expect(out.headers["cf-connecting-ip"] == ["198.51.100.9"])
        #expect(out.headers["x-real-ip"] == ["198.51.100.9"])
        // The gateway's own fields are replaced whoever the peer is.
        #expect(out.headers["x-forwarded-proto"] == ["https"])
        #expect(out.headers["x-forwarded-host"] == ["api.barberpro.com.ar"])
        #expect(out.headers["x-user-id"] == ["u-1"])

        let untrusted = HeaderRewriter.upstreamRequest(head, framing: .none, info: info, removing: ["x-user-id"])
        #expect(untrusted.headers["x-forwarded-for"] == ["203.0.113.7"])
        #expect(untrusted.headers["cf-connecting-ip"].isEmpty && untrusted.headers["x-real-ip"].isEmpty)
        #expect(untrusted.headers["x-user-id"].isEmpty)
    }

    @Test func corsAdditionsMergeVaryAndReplaceUpstreamCORSFields() {
        let upstream = HTTPResponseHead(version: .http1_1, status: .ok, headers: HTTPHeaders([
            ("Content-Length", "2"), ("Vary", "Accept-Encoding"), ("vary", "Accept-Language"),
            ("Access-Control-Allow-Origin", "*"),
        ]))
        let additions = ResponseAdditions(headers: [("access-control-allow-origin", "https://barberpro.com.ar")], corsEnabled: true)
        let (head, _) = HeaderRewriter.clientResponse(
            upstream, requestMethod: .GET, clientVersion: .http1_1, requestID: "rid", addHSTS: false, additions: additions)
        #expect(head.headers["vary"] == ["Accept-Encoding, Accept-Language, Origin"])
        #expect(head.headers["access-control-allow-origin"] == ["https://barberpro.com.ar"])

        let star = HTTPResponseHead(version: .http1_1, status: .ok, headers: HTTPHeaders([("Content-Length", "0"), ("Vary", "*")]))
        let (starHead, _) = HeaderRewriter.clientResponse(
            star, requestMethod: .GET, clientVersion: .http1_1, requestID: "rid", addHSTS: false, additions: additions)
        #expect(starHead.headers["vary"] == ["*"])

        let none = HTTPResponseHead(version: .http1_1, status: .ok, headers: HTTPHeaders([("Content-Length", "0")]))
        let (plainHead, _) = HeaderRewriter.clientResponse(
            none, requestMethod: .GET, clientVersion: .http1_1, requestID: "rid", addHSTS: false,
            additions: ResponseAdditions(headers: [], corsEnabled: true))
        #expect(plainHead.headers["vary"] == ["Origin"])
        #expect(plainHead.headers["access-control-allow-origin"].isEmpty)

        // A route without CORS passes the upstream's fields through untouched.
        let (untouched, _) = HeaderRewriter.clientResponse(
            upstream, requestMethod: .GET, clientVersion: .http1_1, requestID: "rid", addHSTS: false)
        #expect(untouched.headers["vary"] == ["Accept-Encoding", "Accept-Language"])
        #expect(untouched.headers["access-control-allow-origin"] == ["*"])
    }

    @Test func localResponsesGetTheSameAdditions() {
        var headers = HTTPHeaders([("content-type", "application/json")])
        ResponseAdditions(headers: [("access-control-allow-origin", "http://localhost:5173")], corsEnabled: true)
            .apply(to: &headers)
        #expect(headers["vary"] == ["Origin"])
        #expect(headers["access-control-allow-origin"] == ["http://localhost:5173"])
        var untouched = HTTPHeaders([("content-type", "application/json")])
        ResponseAdditions.none.apply(to: &untouched)
        #expect(untouched.count == 1)
    }

    @Test func contentLengthReemittedOnceAndHostFilledForHTTP10() {
        let head = RequestHead(HTTPRequestHead(version: .http1_0, method: .POST, uri: "/", headers: HTTPHeaders([
            ("Content-Length", "3"), ("Content-Length", "3"),
        ])))
        let out = HeaderRewriter.upstreamRequest(head, framing: .contentLength(3), info: info)
        #expect(out.headers["content-length"] == ["3"])
        #expect(out.headers["host"] == ["10.0.0.1:3001"])
    }

    @Test func clientResponseFraming() {
        let upstream = HTTPResponseHead(version: .http1_1, status: .ok, headers: HTTPHeaders([
            ("Transfer-Encoding", "chunked"), ("Connection", "close, X-Hop"), ("X-Hop", "1"), ("X-Request-Id", "up"),
            ("Vary", "Accept-Encoding"),
        ]))
        let (head, framing) = HeaderRewriter.clientResponse(upstream, requestMethod: .GET, clientVersion: .http1_1, requestID: "rid", addHSTS: true)
        #expect(framing == .chunked)
        #expect(head.headers["transfer-encoding"] == ["chunked"])
        #expect(head.headers["x-hop"].isEmpty && head.headers["connection"].isEmpty)
        #expect(head.headers["x-request-id"] == ["rid"])
        #expect(head.headers["vary"] == ["Accept-Encoding"])
        #expect(head.headers["strict-transport-security"].count == 1)

        let (_, old) = HeaderRewriter.clientResponse(upstream, requestMethod: .GET, clientVersion: .http1_0, requestID: "rid", addHSTS: false)
        #expect(old == .closeDelimited)
        let (headHead, headFraming) = HeaderRewriter.clientResponse(upstream, requestMethod: .HEAD, clientVersion: .http1_1, requestID: "rid", addHSTS: false)
        #expect(headFraming == .asIs && headHead.headers["transfer-encoding"].isEmpty)
    }

    @Test func hostsAreNormalizedAsBytes() {
        let cases: [(String?, String)] = [
            ("Api.BarberPro.com.ar:443", "api.barberpro.com.ar"), ("api.barberpro.com.ar.", "api.barberpro.com.ar"),
            ("api.barberpro.com.ar.:8443", "api.barberpro.com.ar"), ("[::1]:8443", "[::1]"), ("[2001:DB8::1]", "[2001:db8::1]"),
            ("127.0.0.1:28443", "127.0.0.1"), ("localhost", "localhost"), ("", ""), (nil, ""), (":80", ""),
            ("caf\u{E9}.example:1", "caf\u{E9}.example"),
        ]
        for (raw, expected) in cases { #expect(RouteTable.normalizeHost(raw) == expected[...], "\(raw ?? "nil")") }
    }

    @Test func requestIDRules() {
        #expect(RequestIdentity.requestID(clientSupplied: "abc-1.2_3") == "abc-1.2_3")
        #expect(RequestIdentity.requestID(clientSupplied: "has space") != "has space")
        #expect(RequestIdentity.requestID(clientSupplied: String(repeating: "a", count: 129)).count < 129)
        #expect(RequestIdentity.requestID(clientSupplied: nil) != RequestIdentity.requestID(clientSupplied: nil))
        // Fresh ids: the process's 8 symbols, then the counter in 7, one more each time; 15 bytes
        // (a string that needs no allocation), acceptable as a client's id, sorting by arrival.
        let ids = (0..<200).map { _ in RequestIdentity.requestID(clientSupplied: nil) }
        #expect(ids.allSatisfy { $0.utf8.count == 15 && RequestIdentity.isAcceptable($0) })
        #expect(Set(ids.map { $0.prefix(8) }).count == 1)
        #expect(ids == ids.sorted() && Set(ids).count == ids.count)
        let symbols = Array("-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
        #expect(symbols == symbols.sorted() && symbols.count == 64)
        func counter(_ id: String) -> Int { id.suffix(7).reduce(0) { $0 * 64 + symbols.firstIndex(of: $1)! } }
        #expect(counter(ids[1]) == counter(ids[0]) + 1)
    }
}
