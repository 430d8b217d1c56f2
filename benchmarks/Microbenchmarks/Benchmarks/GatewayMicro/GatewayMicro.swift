// Hot-path microbenchmarks (issue 6 item 5, issue 4). The fast ones loop `scaledIterations` (1000)
// operations per benchmark iteration; the metrics marked `*` in the output are per operation (the
// tool divides by the scaling factor). Allocation counts come from the malloc interposer (the `MallocInterposer`
// trait); instructions are added only when the kernel exposes the counter (BENCHMARK_INSTRUCTIONS=1,
// set by benchmarks/micro.sh after probing `perf stat -e instructions`).
import Benchmark
import Foundation
@_spi(Benchmarks) import Gateway
import JWTVerifier
import NIOCore
import NIOEmbedded
import NIOHTTP1
import RateLimiter

let benchmarks: @Sendable () -> Void = {
    var metrics: [BenchmarkMetric] = [.wallClock, .throughput, .mallocCountTotal]
    if ProcessInfo.processInfo.environment["BENCHMARK_INSTRUCTIONS"] == "1" { metrics.append(.instructions) }
    Benchmark.defaultConfiguration = .init(
        metrics: metrics, timeUnits: .nanoseconds, warmupIterations: 10, scalingFactor: .kilo,
        maxDuration: .seconds(2), maxIterations: 1_000
    )
    /// Signature checks take tens of microseconds: fewer operations per iteration.
    let slow = Benchmark.Configuration(
        metrics: metrics, timeUnits: .nanoseconds, warmupIterations: 5, scalingFactor: .one,
        maxDuration: .seconds(2), maxIterations: 20_000
    )

    // MARK: Gateway internals through the Benchmarks SPI

    let probe = try! BenchmarkProbe(yaml: MicroConfig.yaml)
    let browserHead = MicroConfig.browserRequestHead()

    Benchmark("Route match (8 routes, exact host + prefix)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(probe.matchRoute(host: "api.barberpro.com.ar", path: "/api/bookings/48213", method: "GET"))
        }
    }

    Benchmark("Route match (8 routes, 404)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(probe.matchRoute(host: "api.barberpro.com.ar", path: "/nothing/here", method: "GET"))
        }
    }

    Benchmark("Header rewrite (upstream request head, 13 fields)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(probe.rewriteUpstreamHead(browserHead))
        }
    }

    Benchmark("CORS origin check (wildcard subdomain)") { benchmark in
        let headers = HTTPHeaders([("origin", "https://turnos.barberpro.com.ar")])
        for _ in benchmark.scaledIterations {
            blackHole(probe.corsAllowedOrigin(headers))
        }
    }

    Benchmark("CORS origin check (refused)") { benchmark in
        let headers = HTTPHeaders([("origin", "https://barberpro.com.ar.evil.example")])
        for _ in benchmark.scaledIterations {
            blackHole(probe.corsAllowedOrigin(headers))
        }
    }

    Benchmark("HTTP/1.1 head parse-to-forward (decode + validate + route + rewrite)") { benchmark in
        // The NIOHTTP1 decoder in a channel, as on a keep-alive connection: bytes in, head + end out,
        // then the gateway's validation, route lookup and upstream head.
        let channel = EmbeddedChannel()
        try! channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)))
        let wire = channel.allocator.buffer(string: MicroConfig.browserRequestWire)
        for _ in benchmark.scaledIterations {
            try! channel.writeInbound(wire)
            guard case .head(let head) = try! channel.readInbound(as: HTTPServerRequestPart.self)!,
                case .end = try! channel.readInbound(as: HTTPServerRequestPart.self)!
            else { fatalError("decoder gave something else") }
            blackHole(probe.validateRouteAndRewrite(head)!)
        }
        _ = try? channel.finish()
    }

    // MARK: JWTVerifier (public library)

    let now = Date(timeIntervalSince1970: Double(JWTFixtures.iat + 60))
    let claimsPolicy = { (cacheSize: Int) in
        JWTVerifierConfiguration(issuer: "barberpro-auth", audiences: ["barberpro-api"], cacheSize: cacheSize)
    }
    let secret = Array("bench-only-secret-0123456789abcdef".utf8)
    let hsToken = try! JWTSigner(algorithm: .hs256, secret: secret, kid: "hs-1").sign([
        ("iss", .string("barberpro-auth")), ("aud", .string("barberpro-api")), ("sub", .string("u-48213")),
        ("role", .string("barber")), ("iat", .integer(JWTFixtures.iat)), ("exp", .integer(JWTFixtures.iat + 3600)),
    ])
    let hsKeys = KeySet(keys: [try! VerificationKey.hmac(kid: "hs-1", algorithm: .hs256, secret: secret)])

    Benchmark("JWT verify HS256 (cached)") { benchmark in
        let verifier = JWTVerifier(configuration: claimsPolicy(10_000), keys: hsKeys)
        _ = try! verifier.verify(hsToken, now: now)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try! verifier.verify(hsToken, now: now))
        }
    }

    Benchmark("JWT verify HS256 (uncached)") { benchmark in
        let verifier = JWTVerifier(configuration: claimsPolicy(0), keys: hsKeys)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try! verifier.verify(hsToken, now: now))
        }
    }

    for (name, algorithm, kid, pem, token) in [
        ("ES256", JWTAlgorithm.es256, JWTFixtures.es256Kid, JWTFixtures.es256PublicKey, JWTFixtures.es256Token),
        ("RS256", JWTAlgorithm.rs256, JWTFixtures.rs256Kid, JWTFixtures.rs256PublicKey, JWTFixtures.rs256Token),
        ("EdDSA", JWTAlgorithm.edDSA, JWTFixtures.eddsaKid, JWTFixtures.eddsaPublicKey, JWTFixtures.eddsaToken),
    ] {
        let keys = KeySet(keys: [try! VerificationKey.publicKey(kid: kid, algorithm: algorithm, pem: pem)])
        Benchmark("JWT verify \(name) (uncached)", configuration: slow) { benchmark in
            let verifier = JWTVerifier(configuration: claimsPolicy(0), keys: keys)
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                blackHole(try! verifier.verify(token, now: now))
            }
        }
    }

    // MARK: RateLimiter (public library), in-process store

    // 1024 clients in turn, 1 ms apart, against one store kept across iterations: the steady state
    // of live keys being updated (limits high enough that every request is allowed).
    let perIP = PolicySpec(name: "per_ip", limit: 100_000, windowSeconds: 900, algorithm: .slidingWindow)
    let login = PolicySpec(name: "login", limit: 100, windowSeconds: 60, algorithm: .slidingLog)
    let clients = (0..<1024).map { "10.0.\($0 >> 8).\($0 & 255)" }
    let perIPChecks = clients.map { [(perIP, RateLimitKey.make(policy: perIP, parts: [.clientIP($0)])!)] }
    let twoPolicyChecks = clients.map {
        [(login, RateLimitKey.make(policy: login, parts: [.clientIP($0)])!),
         (perIP, RateLimitKey.make(policy: perIP, parts: [.clientIP($0)])!)]
    }

    for (name, checks) in [("sliding window", perIPChecks), ("sliding log + sliding window", twoPolicyChecks)] {
        let store = InProcessRateLimitStore()
        let clock = TickClock()
        Benchmark("Rate limit decision, in-process store (\(name), 1024 clients)") { benchmark in
            for _ in benchmark.scaledIterations {
                let tick = clock.next()
                blackHole(store.check(checks[Int(tick & 1023)], now: 1_800_000_000_000 + tick))
            }
        }
    }
}

/// Milliseconds since the start of a rate-limit benchmark. Benchmarks run one at a time on one
/// thread, hence unchecked.
final class TickClock: @unchecked Sendable {
    private var tick: Int64 = 0
    func next() -> Int64 {
        tick += 1
        return tick
    }
}

/// The gateway configuration and request the gateway benchmarks use: the shipped routes plus a few
/// more (8 in all, so a lookup scans past some), plaintext listener (no certificate files).
enum MicroConfig {
    static let yaml = """
        workers: 1
        listeners:
          - { name: public, address: 127.0.0.1:8080 }
        cors:
          allowed_origins: [https://barberpro.com.ar, "https://*.barberpro.com.ar", http://localhost:5173]
          allowed_methods: [GET, POST, PUT, PATCH, DELETE]
          allowed_headers: [authorization, content-type, x-request-id]
          allow_credentials: true
          max_age: 10m
        upstreams:
          booking: { endpoints: [127.0.0.1:3001] }
          billing: { endpoints: [127.0.0.1:3002] }
        routes:
          - { name: login, match: { path_prefix: /api/auth/login, methods: [POST] }, upstream: booking }
          - { name: admin, match: { host: admin.barberpro.com.ar, path_prefix: /api/ }, upstream: booking }
          - { name: invoices, match: { host: "*.barberpro.com.ar", path_prefix: /api/invoices }, upstream: billing }
          - { name: payments, match: { path_prefix: /api/payments, methods: [POST, GET] }, upstream: billing }
          - { name: barbers, match: { path_prefix: /api/barbers }, upstream: booking }
          - { name: services, match: { path_prefix: /api/services }, upstream: booking }
          - { name: bookings, match: { host: api.barberpro.com.ar, path_prefix: /api/bookings }, upstream: booking }
          - { name: api, match: { path_prefix: /api/ }, upstream: booking }
        """

    /// What a browser sends through Cloudflare to the booking API (13 fields; the token is a stand-in).
    static let browserRequestWire =
        "GET /api/bookings/48213?include=barber,service HTTP/1.1\r\n"
        + "Host: api.barberpro.com.ar\r\n"
        + "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
        + "Accept: application/json, text/plain, */*\r\n"
        + "Accept-Language: es-AR,es;q=0.9,en;q=0.8\r\n"
        + "Accept-Encoding: gzip, deflate, br, zstd\r\n"
        + "Referer: https://turnos.barberpro.com.ar/agenda\r\n"
        + "Origin: https://turnos.barberpro.com.ar\r\n"
        + "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1LTQ4MjEzIn0.c2lnbmF0dXJl\r\n"
        + "Connection: keep-alive\r\n"
        + "Cookie: _ga=GA1.1.123456789.1700000000; theme=dark\r\n"
        + "X-Forwarded-For: 198.51.100.23\r\n"
        + "X-User-Id: spoofed\r\n"
        + "Sec-Fetch-Mode: cors\r\n"
        + "\r\n"

    static func browserRequestHead() -> HTTPRequestHead {
        var lines = browserRequestWire.split(separator: "\r\n")
        let requestLine = lines.removeFirst().split(separator: " ")
        let headers = lines.map { line -> (String, String) in
            let colon = line.firstIndex(of: ":")!
            return (String(line[..<colon]), String(line[line.index(after: colon)...].drop { $0 == " " }))
        }
        return HTTPRequestHead(
            version: .http1_1, method: .GET, uri: String(requestLine[1]), headers: HTTPHeaders(headers)
        )
    }
}
