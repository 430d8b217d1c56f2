import Foundation
import Testing
@testable import Gateway

@Suite("Config: shipped file and defaults")
struct ConfigLoaderTests {
    @Test func shippedGatewayYAMLParsesWithItsDefaults() throws {
        let fixture = try ConfigFixture()
        let yaml = try String(contentsOfFile: shippedConfigPath, encoding: .utf8)
        let config = try fixture.parse(yaml)

        #expect(config.workers == 2)
        #expect(config.listeners.map(\.name) == ["public", "http"])
        let publicListener = config.listeners[0]
        #expect(publicListener.address == HostPort(host: "0.0.0.0", port: 8443))
        #expect(publicListener.protocols == [.h2, .http1_1])
        #expect(publicListener.tls?.minVersion == .v1_2)
        #expect(publicListener.tls?.handshakeTimeout == .seconds(10))
        #expect(publicListener.tls?.certificates == [
            CertificateConfig(cert: fixture.directory + "/certs/dev.crt", key: fixture.directory + "/certs/dev.key"),
        ])
        #expect(config.listeners[1].redirectToHTTPS)
        #expect(config.listeners[1].protocols == [.http1_1])
        #expect(config.admin.address.description == "127.0.0.1:9901")
        #expect(config.clientIP == ClientIPConfig(trustedProxies: [], header: "cf-connecting-ip"))
        #expect(config.limits == LimitsConfig(maxHeaderBytes: 16_384, maxBodyBytes: 10_485_760))
        #expect(config.timeouts == TimeoutsConfig(clientHeader: .seconds(10), idle: .seconds(60), drain: .seconds(30)))
        #expect(config.redis == RedisConfig(endpoint: nil, timeout: .milliseconds(20)))

        let cors = try #require(config.cors)
        #expect(cors.allowedOrigins == [
            .exact("https://barberpro.com.ar"),
            .wildcard(scheme: "https", domain: "barberpro.com.ar", port: nil),
            .exact("http://localhost:5173"),
        ])
        #expect(cors.allowCredentials)
        #expect(cors.allowMethodsHeaderValue == "GET, POST, PUT, PATCH, DELETE")
        #expect(cors.allowHeadersHeaderValue == "authorization, content-type, x-request-id")
        #expect(cors.maxAgeHeaderValue == "600")
        #expect(cors.allows(origin: "https://book.barberpro.com.ar"))
        #expect(!cors.allows(origin: "https://evilbarberpro.com.ar"))

        let jwt = try #require(config.jwt)
        #expect(jwt.issuer == "barberpro-auth")
        #expect(jwt.audiences == ["barberpro-api"])
        #expect(jwt.leeway == .seconds(30))
        #expect(jwt.maxLifetime == .seconds(7 * 86_400))
        #expect(jwt.keys == [JWTKeyConfig(kid: "hs-1", algorithm: .hs256,
                                          material: .secret(ConfigSecret("dev-only-secret-change-me-0123456789")))])
        #expect(jwt.jwksURL == nil)
        #expect(jwt.forwardClaims == [ForwardedClaim(claim: "sub", header: "x-user-id"),
                                      ForwardedClaim(claim: "role", header: "x-user-role")])

        #expect(config.rateLimits.onStoreError == .allow)
        #expect(config.rateLimits.headers == .draft6)
        #expect(config.rateLimits.policies == [
            RateLimitPolicy(name: "per_ip", limit: 100, window: .seconds(900), key: [.clientIP],
                            algorithm: .slidingWindow, shadow: false, ipv6Prefix: 64),
            RateLimitPolicy(name: "login", limit: 5, window: .seconds(60), key: [.clientIP],
                            algorithm: .slidingLog, shadow: false, ipv6Prefix: 64),
        ])

        #expect(config.upstreams == [UpstreamConfig(
            name: "booking", endpoints: [HostPort(host: "127.0.0.1", port: 3001)], connectTimeout: .seconds(1),
            responseTimeout: .seconds(15), maxConnections: 256,
            healthCheck: HealthCheckConfig(path: "/health", interval: .seconds(5)))])

        #expect(config.routes.map(\.name) == ["login", "admin", "api"])
        let login = config.routes[0]
        #expect(login.match == RouteMatch(host: nil, pathPrefix: "/api/auth/login", methods: ["POST"]))
        #expect(login.auth == .none)
        #expect(login.rateLimits == ["login", "per_ip"])
        #expect(login.rateLimitPolicyIndices == [1, 0])
        #expect(login.upstreamIndex == 0)
        #expect(login.cors)
        let admin = config.routes[1]
        #expect(admin.match == RouteMatch(host: .exact("admin.barberpro.com.ar"), pathPrefix: "/api/", methods: nil))
        #expect(admin.auth == .required)
        #expect(admin.requireClaims == [RequiredClaim(claim: "role", values: ["admin"])])
        #expect(admin.rateLimits == ["per_ip"])
        let api = config.routes[2]
        #expect(api.match == RouteMatch(host: nil, pathPrefix: "/api/", methods: nil))
        #expect(api.auth == .required)
        #expect(api.requireClaims.isEmpty)
        #expect(api.rateLimits == ["per_ip"])
        // The shipped file passes the start-up checks too (key lengths, supported features).
        #expect(GatewayBuilder.unsupportedFeatures(config).isEmpty)
    }

    @Test func shippedFileLoadsFromDiskWithEnvironmentOverrides() throws {
        let fixture = try ConfigFixture()
        let config = try ConfigLoader.load(path: shippedConfigPath, environment: [
            "TLS_CERT": fixture.directory + "/certs/dev.crt",
            "TLS_KEY": fixture.directory + "/certs/dev.key",
            "JWT_SECRET": "from-the-environment-0123456789abcdef",
            "REDIS_URL": "redis://gw:pa55@10.0.0.5:6380/2",
        ])
        #expect(config.listeners[0].tls?.certificates[0].cert == fixture.directory + "/certs/dev.crt")
        #expect(config.jwt?.keys[0].material == .secret(ConfigSecret("from-the-environment-0123456789abcdef")))
        let redis = try #require(config.redis.endpoint)
        #expect(redis.host == "10.0.0.5" && redis.port == 6380 && redis.database == 2 && redis.username == "gw")
        #expect(redis.password?.value == "pa55")
        #expect(redis.description == "redis://gw:<redacted>@10.0.0.5:6380/2")
    }

    @Test func relativePathsResolveAgainstTheConfigDirectory() throws {
        let fixture = try ConfigFixture()
        let path = fixture.directory + "/gateway.yaml"
        try Data("""
        listeners:
          - name: tls
            address: "[::1]:0"
            tls: { certificates: [{ cert: certs/dev.crt, key: certs/dev.key }] }
        """.utf8).write(to: URL(fileURLWithPath: path))
        let config = try ConfigLoader.load(path: path, environment: [:])
        #expect(config.listeners[0].tls?.certificates[0].key == fixture.directory + "/certs/dev.key")
        #expect(config.listeners[0].address == HostPort(host: "::1", port: 0))
        #expect(config.listeners[0].address.description == "[::1]:0")
    }

    @Test func defaultsForAMinimalFile() throws {
        let config = try ConfigFixture().parse(minimalYAML)
        #expect(config.workers == ProcessInfo.processInfo.activeProcessorCount)
        #expect(config.listeners[0].protocols == [.http1_1])
        #expect(config.listeners[0].tls == nil)
        #expect(!config.listeners[0].redirectToHTTPS)
        #expect(config.admin == AdminConfig(address: HostPort(host: "127.0.0.1", port: 9901)))
        #expect(config.clientIP.header == "cf-connecting-ip")
        #expect(config.limits == LimitsConfig(maxHeaderBytes: 16 * 1024, maxBodyBytes: 10 * 1024 * 1024))
        #expect(config.timeouts == TimeoutsConfig(clientHeader: .seconds(10), idle: .seconds(60), drain: .seconds(30)))
        #expect(config.redis == RedisConfig(endpoint: nil, timeout: .milliseconds(20)))
        #expect(config.cors == nil && config.jwt == nil)
        #expect(config.rateLimits == RateLimitsConfig(onStoreError: .allow, headers: .draft6, exemptCIDRs: [], policies: []))
        #expect(config.upstreams.isEmpty && config.routes.isEmpty)
    }

    @Test func defaultsInsideSections() throws {
        let config = try ConfigFixture().parse(minimalYAML + """
        jwt: { issuer: i, audiences: [a], keys: [{ kid: k, algorithm: HS512, secret: s }] }
        rate_limits:
          policies:
            p: { limit: 1, window: 1s }
        upstreams:
          u: { endpoints: ["[2001:db8::1]:80"], health_check: {} }
        routes:
          - { name: r, upstream: u }
        """)
        #expect(config.jwt?.leeway == .seconds(30))
        #expect(config.jwt?.maxLifetime == .seconds(604_800))
        #expect(config.rateLimits.policies[0] == RateLimitPolicy(
            name: "p", limit: 1, window: .seconds(1), key: [.clientIP], algorithm: .slidingWindow,
            shadow: false, ipv6Prefix: 64))
        #expect(config.upstreams[0] == UpstreamConfig(
            name: "u", endpoints: [HostPort(host: "2001:db8::1", port: 80)], connectTimeout: .seconds(1),
            responseTimeout: .seconds(15), maxConnections: 256,
            healthCheck: HealthCheckConfig(path: "/health", interval: .seconds(5))))
        let route = config.routes[0]
        #expect(route.match == RouteMatch(host: nil, pathPrefix: "/", methods: nil))
        #expect(route.auth == .none && route.cors && route.rateLimits.isEmpty && route.requireClaims.isEmpty)
    }

    @Test func orderOfPoliciesUpstreamsAndRoutesFollowsTheFile() throws {
        let config = try ConfigFixture().parse(minimalYAML + """
        rate_limits:
          policies:
            zeta: { limit: 1, window: 1s }
            alpha: { limit: 2, window: 2s, key: [route, "header:X-Api-Key", jwt_subject], shadow: true, ipv6_prefix: 48 }
        upstreams:
          zz: { endpoints: [a.internal:1] }
          aa: { endpoints: [b.internal:2, b.internal:3] }
        routes:
          - { name: second, upstream: aa, rate_limits: [alpha, zeta], match: { host: "*.Example.com" } }
          - { name: first, upstream: zz, cors: false }
        """)
        #expect(config.rateLimits.policies.map(\.name) == ["zeta", "alpha"])
        #expect(config.rateLimits.policies[1].key == [.route, .header("x-api-key"), .jwtSubject])
        #expect(config.rateLimits.policies[1].shadow && config.rateLimits.policies[1].ipv6Prefix == 48)
        #expect(config.upstreams.map(\.name) == ["zz", "aa"])
        #expect(config.routes.map(\.name) == ["second", "first"])
        #expect(config.routes[0].upstreamIndex == 1 && config.routes[1].upstreamIndex == 0)
        #expect(config.routes[0].rateLimitPolicyIndices == [1, 0])
        #expect(config.routes[0].match.host == .wildcard("example.com"))
        #expect(!config.routes[1].cors)
    }

    @Test func trustedProxiesAcceptCIDRsAndTheCloudflarePreset() throws {
        let fixture = try ConfigFixture()
        let list = try fixture.parse(minimalYAML + """
        client_ip: { trusted_proxies: [10.0.0.0/8, "2001:db8::/32", 192.168.1.7, cloudflare, "::ffff:0:0/96"], header: X-Real-IP }
        rate_limits: { exempt_cidrs: [127.0.0.0/8] }
        """)
        #expect(list.clientIP.trustedProxies.count == 5)
        #expect(list.clientIP.trustedProxies[0] == .network(try #require(try? IPNetwork.parse("10.0.0.0/8").get())))
        if case .network(let single) = list.clientIP.trustedProxies[2] {
            #expect(single.prefixLength == 32 && single.address == [192, 168, 1, 7])
        } else {
            Issue.record("expected a network")
        }
        #expect(list.clientIP.trustedProxies[3] == .cloudflare)
        #expect(list.clientIP.header == "x-real-ip")
        #expect(list.rateLimits.exemptCIDRs.map(\.description) == ["127.0.0.0/8"])
        let preset = try fixture.parse(minimalYAML + "client_ip: { trusted_proxies: cloudflare }\n")
        #expect(preset.clientIP.trustedProxies == [.cloudflare])
    }

    @Test func shippedFileWithoutCertificatesNamesBothFiles() {
        do {
            _ = try ConfigLoader.load(path: shippedConfigPath, environment: ["TLS_CERT": "nope/dev.crt", "TLS_KEY": "nope/dev.key"])
            Issue.record("expected errors: the package ships no certificates")
        } catch {
            #expect(error.errors.map(\.description) == [
                "listeners[0].tls.certificates[0].cert: file not found: nope/dev.crt",
                "listeners[0].tls.certificates[0].key: file not found: nope/dev.key",
            ])
        }
    }

    @Test func unreadableMainConfigIsOneErrorAtPathConfig() {
        do {
            _ = try ConfigLoader.load(path: "/nonexistent/gateway.yaml", environment: [:])
            Issue.record("expected an error")
        } catch {
            #expect(error.errors == [ConfigError(path: "config", reason: "file not found: /nonexistent/gateway.yaml")])
            #expect(error.description == "config: file not found: /nonexistent/gateway.yaml")
        }
    }

    @Test func configIsSendableAndEquatable() throws {
        let fixture = try ConfigFixture()
        let a = try fixture.parse(minimalYAML + "workers: 1\n")
        let b = try fixture.parse(minimalYAML + "workers: 1\n")
        let c = try fixture.parse(minimalYAML + "workers: 3\n")
        #expect(a == b)
        #expect(a != c)
        func requireSendable<T: Sendable>(_: T) {}
        requireSendable(a)
    }
}
