import NIOHTTP1
import Testing

@testable import Gateway

/// Each CORS rule of issue 4 §3, on `CORSPolicy` alone (no I/O).
@Suite("CORS policy")
struct CORSTests {
    static func policy(_ section: String) throws -> CORSPolicy {
        let config = try ConfigFixture().parse(minimalYAML + section)
        return CORSPolicy(try #require(config.cors))
    }

    static let shipped = """
        cors:
          allowed_origins: [https://barberpro.com.ar, "https://*.barberpro.com.ar", http://localhost:5173]
          allowed_methods: [GET, POST, PUT, PATCH, DELETE]
          allowed_headers: [authorization, content-type, x-request-id]
          exposed_headers: [ratelimit-limit, x-request-id]
          allow_credentials: true
          max_age: 10m
        """

    func headers(_ pairs: (String, String)...) -> HeadFields { HeadFields(HTTPHeaders(pairs)) }

    func allowed(_ origin: String, _ policy: CORSPolicy) -> Bool {
        policy.allowedOrigin(headers(("Origin", origin))) != nil
    }

    @Test func exactAndWildcardOriginsOnALabelBoundary() throws {
        let policy = try Self.policy(Self.shipped)
        #expect(allowed("https://barberpro.com.ar", policy))
        #expect(allowed("https://BarberPro.com.ar", policy))
        #expect(allowed("https://book.barberpro.com.ar", policy))
        #expect(allowed("https://a.b.barberpro.com.ar", policy))
        #expect(allowed("http://localhost:5173", policy))
        for refused in [
            "https://evilbarberpro.com.ar", "https://barberpro.com.ar.evil.com", "http://book.barberpro.com.ar",
            "https://book.barberpro.com.ar:8443", "https://barberpro.com.ar:444", "http://localhost:5174",
            "https://localhost:5173", "https://.barberpro.com.ar", "null", "", "https://barberpro.com.ar/",
        ] {
            #expect(!allowed(refused, policy), "\(refused)")
        }
    }

    @Test func nullOnlyWhenListedAndNeverByStar() throws {
        let star = try Self.policy("cors: { allowed_origins: [\"*\"] }\n")
        #expect(allowed("https://anything.example", star))
        #expect(!allowed("null", star))
        let listed = try Self.policy("cors: { allowed_origins: [\"null\", https://a.example] }\n")
        #expect(allowed("null", listed))
    }

    @Test func severalOriginFieldsAreRefused() throws {
        let policy = try Self.policy(Self.shipped)
        #expect(policy.allowedOrigin(headers(("Origin", "https://barberpro.com.ar"), ("Origin", "https://barberpro.com.ar"))) == nil)
        #expect(policy.allowedOrigin(headers()) == nil)
    }

    @Test func preflightRecognition() {
        #expect(CORSPolicy.preflightMethod(method: .OPTIONS, headers: headers(
            ("Origin", "https://barberpro.com.ar"), ("Access-Control-Request-Method", "PUT"))) == "PUT")
        // OPTIONS without Access-Control-Request-Method (or without Origin) is an ordinary request.
        #expect(CORSPolicy.preflightMethod(method: .OPTIONS, headers: headers(("Origin", "https://barberpro.com.ar"))) == nil)
        #expect(CORSPolicy.preflightMethod(method: .OPTIONS, headers: headers(("Access-Control-Request-Method", "PUT"))) == nil)
        #expect(CORSPolicy.preflightMethod(method: .GET, headers: headers(
            ("Origin", "https://barberpro.com.ar"), ("Access-Control-Request-Method", "PUT"))) == nil)
    }

    @Test func allowedPreflightEchoesTheOriginWithEveryField() throws {
        let policy = try Self.policy(Self.shipped)
        let result = policy.preflight(requestedMethod: "DELETE", headers: headers(
            ("Origin", "https://book.barberpro.com.ar"), ("Access-Control-Request-Method", "DELETE"),
            ("Access-Control-Request-Headers", "Authorization, Content-Type,X-Request-Id")))
        guard case .allowed(let fields) = result else {
            Issue.record("preflight refused")
            return
        }
        let map = Dictionary(fields, uniquingKeysWith: { a, _ in a })
        #expect(map["access-control-allow-origin"] == "https://book.barberpro.com.ar")
        #expect(map["access-control-allow-methods"] == "GET, POST, PUT, PATCH, DELETE")
        #expect(map["access-control-allow-headers"] == "authorization, content-type, x-request-id")
        #expect(map["access-control-allow-credentials"] == "true")
        #expect(map["access-control-max-age"] == "600")
        #expect(!fields.contains { $0.1 == "*" })
    }

    @Test func preflightRejections() throws {
        let policy = try Self.policy(Self.shipped)
        func rejected(_ origin: String, _ method: String, _ requestHeaders: String? = nil) -> Bool {
            var h = headers(("Origin", origin), ("Access-Control-Request-Method", method))
            if let requestHeaders { h.add(name: "Access-Control-Request-Headers", value: requestHeaders) }
            if case .rejected = policy.preflight(requestedMethod: method, headers: h) { return true }
            return false
        }
        #expect(rejected("https://evilbarberpro.com.ar", "GET"))
        #expect(rejected("https://barberpro.com.ar", "TRACE"))
        #expect(rejected("https://barberpro.com.ar", "PUT", "authorization, x-debug"))
        #expect(!rejected("https://barberpro.com.ar", "PUT", "AUTHORIZATION"))
        // CORS-safelisted methods cannot be refused by a browser-side check anyway.
        #expect(!rejected("https://barberpro.com.ar", "HEAD"))
    }

    @Test func actualRequestFields() throws {
        let policy = try Self.policy(Self.shipped)
        let allowed = policy.actual(headers(("Origin", "http://localhost:5173")))
        #expect(allowed.corsEnabled)
        let map = Dictionary(allowed.headers, uniquingKeysWith: { a, _ in a })
        #expect(map["access-control-allow-origin"] == "http://localhost:5173")
        #expect(map["access-control-allow-credentials"] == "true")
        #expect(map["access-control-expose-headers"] == "ratelimit-limit, x-request-id")
        #expect(map["access-control-max-age"] == nil && map["access-control-allow-methods"] == nil)

        // Disallowed or absent origin: no CORS fields, but Vary: Origin all the same.
        let refused = policy.actual(headers(("Origin", "https://evil.example")))
        #expect(refused.corsEnabled && refused.headers.isEmpty)
        let none = policy.actual(headers())
        #expect(none.corsEnabled && none.headers.isEmpty)
    }

    /// A listed origin's fields are built once; whichever way they are made, each origin gets the
    /// same fields, its own value echoed as it was sent.
    @Test func listedAndWildcardOriginsGetTheSameFields() throws {
        let policy = try Self.policy(Self.shipped)
        for origin in ["https://barberpro.com.ar", "HTTPS://BarberPro.com.ar", "https://turnos.barberpro.com.ar", "http://localhost:5173"] {
            let fields = policy.actual(headers(("Origin", origin))).headers
            #expect(fields.map(\.0) == ["access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers"], "\(origin)")
            #expect(fields.first?.1 == origin, "\(origin)")
        }
    }

    @Test func withoutCredentialsNoCredentialsField() throws {
        let policy = try Self.policy("cors: { allowed_origins: [https://a.example] }\n")
        let result = policy.actual(headers(("Origin", "https://a.example")))
        #expect(result.headers.map(\.0) == ["access-control-allow-origin"])
    }

    @Test func varyMerge() {
        #expect(ResponseAdditions.mergedVary([]) == "Origin")
        #expect(ResponseAdditions.mergedVary(["Accept-Encoding"]) == "Accept-Encoding, Origin")
        #expect(ResponseAdditions.mergedVary(["accept-encoding, origin"]) == nil)
        #expect(ResponseAdditions.mergedVary(["*"]) == nil)
    }
}
