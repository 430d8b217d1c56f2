import Foundation
import Testing
@testable import Gateway

@Suite("Config: validation errors")
struct ConfigValidationTests {
    let fixture: ConfigFixture
    init() throws { fixture = try ConfigFixture() }

    @Test func unknownKeysAreReportedWithSuggestions() {
        let errors = fixture.errors("""
        listeners:
          - name: main
            adress: 127.0.0.1:0
        timeout: { idle: 1s }
        limits: { max_body: 1MiB }
        frobnicate: 1
        """)
        #expect(errors.contains("listeners[0].adress: unknown key (did you mean 'address'?)"))
        #expect(errors.contains("listeners[0].address: missing required key"))
        #expect(errors.contains("timeout: unknown key (did you mean 'timeouts'?)"))
        #expect(errors.contains("limits.max_body: unknown key (did you mean 'max_body_bytes'?)"))
        #expect(errors.contains { $0.hasPrefix("frobnicate: unknown key (expected one of: workers, listeners,") })
    }

    @Test func wrongTypes() {
        let errors = fixture.errors(minimalYAML + """
        workers: two
        limits: { max_body_bytes: ten, max_header_bytes: [1] }
        cors: [https://a.example]
        redis: { timeout: 20 }
        routes: { name: x }
        """)
        #expect(errors.contains("workers: expected an integer, got 'two'"))
        #expect(errors.contains("limits.max_body_bytes: expected a size like 10MiB, got 'ten'"))
        #expect(errors.contains("limits.max_header_bytes: expected a size like 10MiB, got a list"))
        #expect(errors.contains("cors: expected a mapping, got a list"))
        #expect(errors.contains("redis.timeout: expected a duration like 20ms, 30s, 15m, 2h or 7d, got '20'"))
        #expect(errors.contains("routes: expected a list, got a mapping"))
    }

    @Test func durationsAndSizes() {
        let errors = fixture.errors(minimalYAML + """
        timeouts: { client_header: 10 s, idle: 0s, drain: 1.5s }
        limits: { max_header_bytes: 512, max_body_bytes: 10mb }
        jwt: { issuer: i, audiences: [a], leeway: 1h, keys: [{ kid: k, algorithm: HS256, secret: s }] }
        """)
        #expect(errors.contains("timeouts.client_header: expected a duration like 20ms, 30s, 15m, 2h or 7d, got '10 s'"))
        #expect(errors.contains("timeouts.idle: must be at least 1ms, got '0s'"))
        #expect(errors.contains("timeouts.drain: expected a duration like 20ms, 30s, 15m, 2h or 7d, got '1.5s'"))
        #expect(errors.contains("limits.max_header_bytes: must be at least 1024 bytes, got '512'"))
        #expect(errors.contains("limits.max_body_bytes: expected a size like 10MiB, got '10mb'"))
        #expect(errors.contains("jwt.leeway: must be at most 5m, got '1h'"))
        #expect(errors.count == 6)
    }

    @Test func durationAndSizeSyntax() {
        #expect(ConfigSyntax.duration("20ms") == .milliseconds(20))
        #expect(ConfigSyntax.duration("30s") == .seconds(30))
        #expect(ConfigSyntax.duration("15m") == .seconds(900))
        #expect(ConfigSyntax.duration("2h") == .seconds(7200))
        #expect(ConfigSyntax.duration("7d") == .seconds(604_800))
        #expect(ConfigSyntax.duration("0s") == .zero)
        for bad in ["", "s", "-1s", "1", "1S", "1.5s", "1 s", "1sec", "99999999999999d"] {
            #expect(ConfigSyntax.duration(bad) == nil, "\(bad)")
        }
        #expect(ConfigSyntax.size("16KiB") == 16_384)
        #expect(ConfigSyntax.size("10MiB") == 10_485_760)
        #expect(ConfigSyntax.size("1GiB") == 1_073_741_824)
        #expect(ConfigSyntax.size("64KB") == 64_000)
        #expect(ConfigSyntax.size("2MB") == 2_000_000)
        #expect(ConfigSyntax.size("4096") == 4096)
        #expect(ConfigSyntax.size("10B") == 10)
        for bad in ["", "KiB", "-1", "1.5MiB", "10 MiB", "10kib", "999999999999999GiB"] {
            #expect(ConfigSyntax.size(bad) == nil, "\(bad)")
        }
    }

    @Test func addresses() {
        let errors = fixture.errors("""
        listeners:
          - { name: a, address: "0.0.0.0" }
          - { name: b, address: "0.0.0.0:70000" }
          - { name: c, address: "::1:80" }
          - { name: d, address: "300.1.1.1:80" }
          - { name: e, address: "[::1]:8443" }
          - { name: f, address: "localhost:8080" }
        admin: { address: "127.0.0.1:" }
        upstreams:
          u: { endpoints: ["127.0.0.1:0", "bad host:80"] }
        """)
        let usage = "expected an address like 0.0.0.0:8443, [::1]:9901 or host:port"
        #expect(errors.contains("listeners[0].address: \(usage) (port 0...65535), got '0.0.0.0'"))
        #expect(errors.contains("listeners[1].address: \(usage) (port 0...65535), got '0.0.0.0:70000'"))
        #expect(errors.contains("listeners[2].address: \(usage) (port 0...65535), got '::1:80'"))
        #expect(errors.contains("listeners[3].address: \(usage) (port 0...65535), got '300.1.1.1:80'"))
        #expect(errors.contains("admin.address: \(usage) (port 0...65535), got '127.0.0.1:'"))
        #expect(errors.contains("upstreams.u.endpoints[0]: \(usage) (port 1...65535), got '127.0.0.1:0'"))
        #expect(errors.contains("upstreams.u.endpoints[1]: \(usage) (port 1...65535), got 'bad host:80'"))
        #expect(!errors.contains { $0.hasPrefix("listeners[4]") || $0.hasPrefix("listeners[5]") })
    }

    @Test func cidrs() {
        let errors = fixture.errors(minimalYAML + """
        client_ip:
          trusted_proxies: [10.0.0/8, 10.0.0.0/33, 10.0.0.1/8, "2001:db8::/129", "2001:db8:::/32", cloudflair, 010.1.1.1/32]
        rate_limits: { exempt_cidrs: [localhost] }
        """)
        let usage = "expected a CIDR like 10.0.0.0/8 or 2001:db8::/32, or the preset 'cloudflare'"
        #expect(errors == [
            "client_ip.trusted_proxies[0]: \(usage), got '10.0.0/8'",
            "client_ip.trusted_proxies[1]: prefix length must be 0...32, got '10.0.0.0/33'",
            "client_ip.trusted_proxies[2]: '10.0.0.1/8' has host bits set (did you mean '10.0.0.0/8'?)",
            "client_ip.trusted_proxies[3]: prefix length must be 0...128, got '2001:db8::/129'",
            "client_ip.trusted_proxies[4]: \(usage), got '2001:db8:::/32'",
            "client_ip.trusted_proxies[5]: \(usage), got 'cloudflair' (did you mean 'cloudflare'?)",
            "client_ip.trusted_proxies[6]: \(usage), got '010.1.1.1/32'",
            "rate_limits.exempt_cidrs[0]: expected a CIDR like 10.0.0.0/8 or 2001:db8::/32, got 'localhost'",
        ])
    }

    @Test func ipNetworkParsingAndContainment() throws {
        let v6 = try IPNetwork.parse("2001:db8::/32").get()
        #expect(v6.isIPv6 && v6.prefixLength == 32)
        #expect(v6.contains([0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 7, count: 12)))
        #expect(!v6.contains([0x20, 0x01, 0x0d, 0xb9] + Array(repeating: 0, count: 12)))
        let mapped = try IPNetwork.parse("::ffff:192.0.2.0/120").get()
        #expect(mapped.address.suffix(6) == [0xff, 0xff, 192, 0, 2, 0])
        let v4 = try IPNetwork.parse("172.16.0.0/12").get()
        #expect(v4.contains([172, 31, 255, 255]) && !v4.contains([172, 32, 0, 0]))
        #expect(try IPNetwork.parse("0.0.0.0/0").get().contains([8, 8, 8, 8]))
    }

    @Test func origins() {
        let errors = fixture.errors(minimalYAML + """
        cors:
          allowed_origins: ["*", https://ok.example, https://a.example/, ftp://a.example, "https://*.", "https://a.example:0", barberpro.com.ar]
          allow_credentials: true
        """)
        #expect(errors.contains("cors.allowed_origins[0]: '*' cannot be combined with allow_credentials: true (browsers reject it); list the origins"))
        #expect(errors.contains("cors.allowed_origins[2]: an origin has no path, got 'https://a.example/' (did you mean 'https://a.example'?)"))
        #expect(errors.contains("cors.allowed_origins[3]: origin scheme must be http or https, got 'ftp://a.example'"))
        #expect(errors.contains { $0.hasPrefix("cors.allowed_origins[4]: expected an origin like") })
        #expect(errors.contains { $0.hasPrefix("cors.allowed_origins[5]: expected an origin like") && $0.hasSuffix("(bad port)") })
        #expect(errors.contains { $0.hasPrefix("cors.allowed_origins[6]: expected an origin like") })
        #expect(!errors.contains { $0.hasPrefix("cors.allowed_origins[1]") })
        #expect(errors.count == 6)
    }

    @Test func wildcardWithoutCredentialsIsFine() throws {
        let config = try fixture.parse(minimalYAML + "cors: { allowed_origins: ['*'], max_age: 0s }\n")
        #expect(config.cors?.allowedOrigins == [.any])
        #expect(config.cors?.maxAgeHeaderValue == "0")
        #expect(config.cors?.allowedMethods == ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    }

    @Test func missingRequiredKeys() {
        let errors = fixture.errors("""
        admin: {}
        listeners:
          - address: 127.0.0.1:0
        upstreams:
          u: { connect_timeout: 1s }
        jwt: { keys: [{ kid: k }] }
        rate_limits: { policies: { p: { key: route } } }
        routes:
          - match: { path_prefix: / }
        """)
        #expect(errors.contains("listeners[0].name: missing required key"))
        #expect(errors.contains("upstreams.u.endpoints: missing required key"))
        #expect(errors.contains("jwt.issuer: missing required key"))
        #expect(errors.contains("jwt.audiences: missing required key"))
        #expect(errors.contains("jwt.keys[0].algorithm: missing required key"))
        #expect(errors.contains("rate_limits.policies.p.limit: missing required key"))
        #expect(errors.contains("rate_limits.policies.p.window: missing required key"))
        #expect(errors.contains("routes[0].name: missing required key"))
        #expect(errors.contains("routes[0].upstream: missing required key"))
        #expect(fixture.errors("workers: 1\n") == ["listeners: missing required key"])
    }

    @Test func duplicates() {
        let errors = fixture.errors("""
        listeners:
          - { name: web, address: 0.0.0.0:8080 }
          - { name: web, address: 0.0.0.0:8080 }
          - { name: other, address: 127.0.0.1:0 }
          - { name: other2, address: 127.0.0.1:0, protocols: [http/1.1, http/1.1] }
        admin: { address: 0.0.0.0:8080 }
        upstreams:
          u: { endpoints: [a.internal:1] }
        jwt:
          issuer: i
          audiences: [a]
          keys: [{ kid: k, algorithm: HS256, secret: x }, { kid: k, algorithm: HS384, secret: y }]
        routes:
          - { name: api, upstream: u, match: { methods: [GET, GET] } }
          - { name: api, upstream: u }
        """)
        #expect(errors.contains("listeners[1].name: duplicate listener name 'web' (first at listeners[0].name)"))
        #expect(errors.contains("listeners[1].address: address 0.0.0.0:8080 is already used by listeners[0]"))
        #expect(errors.contains("listeners[3].protocols[1]: duplicate protocol 'http/1.1' (first at listeners[3].protocols[0])"))
        #expect(errors.contains("admin.address: address 0.0.0.0:8080 is already used by listeners[0]"))
        #expect(errors.contains("jwt.keys[1].kid: duplicate kid 'k' (first at jwt.keys[0].kid)"))
        #expect(errors.contains("routes[0].match.methods[1]: duplicate method 'GET' (first at routes[0].match.methods[0])"))
        #expect(errors.contains("routes[1].name: duplicate route name 'api' (first at routes[0].name)"))
        #expect(!errors.contains { $0.hasPrefix("listeners[2]") })  // port 0 never clashes
        #expect(errors.count == 7)
    }

    @Test func yamlDuplicateKeysAreReportedWithPosition() {
        let errors = fixture.errors("""
        listeners:
          - name: a
            name: b
            address: 127.0.0.1:0
        """)
        #expect(errors.count == 1)
        #expect(errors.first?.hasPrefix("config: duplicate key 'name' in a mapping (line ") == true)
    }

    @Test func yamlSyntaxErrorsHavePositionsAndNoSourceText() {
        let errors = fixture.errors("listeners: [\n  secret-value: {\n")
        #expect(errors.count == 1)
        #expect(errors.first?.hasPrefix("config: invalid YAML at line ") == true)
        #expect(errors.first?.contains("secret-value") == false)
        #expect(fixture.errors("") == ["config: file is empty"])
        #expect(fixture.errors("- a\n- b\n") == ["config: expected a mapping of sections (workers, listeners, routes, ...) at the top level"])
    }

    @Test func crossReferences() {
        let errors = fixture.errors(minimalYAML + """
        rate_limits:
          policies:
            per_ip: { limit: 1, window: 1s }
        upstreams:
          booking: { endpoints: [127.0.0.1:3001] }
        routes:
          - { name: a, upstream: booking }
          - { name: b, upstream: booking }
          - { name: c, upstream: bookng, rate_limits: [per_iq, nothing-like-it] }
          - { name: d, upstream: zzz, auth: required, require_claims: { role: [admin] } }
          - { name: e, upstream: booking, require_claims: { role: [admin] } }
        """)
        #expect(errors.contains("routes[2].upstream: unknown upstream 'bookng' (did you mean 'booking'?)"))
        #expect(errors.contains("routes[2].rate_limits[0]: unknown rate-limit policy 'per_iq' (did you mean 'per_ip'?)"))
        #expect(errors.contains("routes[2].rate_limits[1]: unknown rate-limit policy 'nothing-like-it' (defined: per_ip)"))
        #expect(errors.contains("routes[3].upstream: unknown upstream 'zzz' (defined: booking)"))
        #expect(errors.contains("routes[3].auth: auth: required needs a jwt section"))
        #expect(errors.contains("routes[4].require_claims: needs auth: required or optional (claims come from a verified token)"))
        #expect(errors.count == 6)
    }

    @Test func aBrokenUpstreamDoesNotCascadeIntoUnknownReferences() {
        let errors = fixture.errors(minimalYAML + """
        upstreams:
          booking: { endpoints: [nope] }
        routes:
          - { name: a, upstream: booking }
        """)
        #expect(errors.count == 1)
        #expect(errors.first?.hasPrefix("upstreams.booking.endpoints[0]: expected an address") == true)
    }

    @Test func enumValuesListWhatIsAllowed() {
        let errors = fixture.errors("""
        listeners:
          - name: t
            address: 127.0.0.1:0
            protocols: [h3]
            tls: { min_version: "1.1", certificates: [{ cert: certs/dev.crt, key: certs/dev.key }] }
        jwt: { issuer: i, audiences: [a], keys: [{ kid: k, algorithm: hs256, secret: s }] }
        rate_limits:
          on_store_error: alow
          headers: draft-7
          policies:
            p: { limit: 1, window: 1s, algorithm: fixed_window, key: clientip }
        upstreams: { u: { endpoints: [a.b:1] } }
        routes:
          - { name: r, upstream: u, auth: requried }
        """)
        #expect(errors.contains("listeners[0].protocols[0]: expected one of h2, http/1.1, h2c, got 'h3' (did you mean 'h2'?)"))
        #expect(errors.contains("listeners[0].tls.min_version: expected one of 1.2, 1.3, got '1.1' (did you mean '1.2'?)"))
        #expect(errors.contains("jwt.keys[0].algorithm: expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, got 'hs256' (did you mean 'HS256'?)"))
        #expect(errors.contains("rate_limits.on_store_error: expected one of allow, deny, got 'alow' (did you mean 'allow'?)"))
        #expect(errors.contains("rate_limits.headers: expected one of draft-6, ietf-draft-10, got 'draft-7' (did you mean 'draft-6'?)"))
        #expect(errors.contains("rate_limits.policies.p.algorithm: expected one of sliding_window, sliding_log, got 'fixed_window'"))
        #expect(errors.contains("rate_limits.policies.p.key: expected client_ip, jwt_subject, claim:PATH, route or header:NAME, got 'clientip' (did you mean 'client_ip'?)"))
        #expect(errors.contains("routes[0].auth: expected one of none, optional, required, got 'requried' (did you mean 'required'?)"))
    }

    @Test func missingFiles() {
        let errors = fixture.errors("""
        listeners:
          - name: t
            address: 127.0.0.1:0
            tls:
              certificates:
                - { cert: certs/dev.crt, key: certs/missing.key }
                - { cert: /nonexistent/x.crt, key: certs }
        jwt:
          issuer: i
          audiences: [a]
          keys: [{ kid: r, algorithm: RS256, public_key: keys/nope.pem }, { kid: ok, algorithm: ES256, public_key: keys/rs1.pem }]
        """)
        #expect(errors == [
            "listeners[0].tls.certificates[0].key: file not found: certs/missing.key",
            "listeners[0].tls.certificates[1].cert: file not found: /nonexistent/x.crt",
            "listeners[0].tls.certificates[1].key: is a directory, not a file: certs",
            "jwt.keys[0].public_key: file not found: keys/nope.pem",
        ])
    }

    @Test func listenerRules() {
        let errors = fixture.errors("""
        listeners:
          - name: t
            address: 127.0.0.1:0
            redirect_to_https: true
            protocols: [h2c]
            tls: { certificates: [] }
          - { name: plain, address: 127.0.0.1:0, protocols: [h2], redirect_to_https: true }
          - { name: "bad name", address: 127.0.0.1:0 }
        workers: 0
        """)
        #expect(errors.contains("listeners[0].tls.certificates: must not be empty"))
        #expect(errors.contains("listeners[0].protocols[0]: h2c is cleartext HTTP/2; on a tls listener use h2"))
        #expect(errors.contains("listeners[0].redirect_to_https: only allowed on a listener without tls"))
        #expect(errors.contains("listeners[1].protocols[0]: h2 needs tls (ALPN); use h2c for cleartext HTTP/2"))
        #expect(errors.contains("listeners[2].name: names may only use letters, digits, '_', '-' and '.', got 'bad name'"))
        #expect(errors.contains("workers: must be between 1 and 1024, got 0"))
        #expect(fixture.errors("listeners: [{ name: h, address: 127.0.0.1:0, redirect_to_https: true }]\n")
            == ["listeners[0].redirect_to_https: no listener has tls to redirect to"])
    }

    @Test func routeMatchRules() {
        let errors = fixture.errors(minimalYAML + """
        upstreams: { u: { endpoints: [a.b:1] } }
        routes:
          - { name: a, upstream: u, match: { path_prefix: api/, methods: [get], host: "bad_host!" } }
          - { name: b, upstream: u, match: { path_prefix: "/a b", methods: [] } }
        """)
        #expect(errors == [
            "routes[0].match.host: expected a host like api.example.com or *.example.com, got 'bad_host!'",
            "routes[0].match.path_prefix: must start with '/', got 'api/' (did you mean '/api/'?)",
            "routes[0].match.methods[0]: methods must be uppercase, got 'get' (did you mean 'GET'?)",
            "routes[1].match.path_prefix: must be a path without query, fragment or spaces, got '/a b'",
            "routes[1].match.methods: must not be empty",
        ])
    }

    @Test func jwtRules() {
        let errors = fixture.errors(minimalYAML + """
        jwt:
          issuer: ""
          audiences: []
          max_lifetime: 0s
          jwks_url: http://auth.internal/jwks.json
          keys:
            - { kid: a, algorithm: HS256, public_key: keys/rs1.pem }
            - { kid: b, algorithm: RS256, secret: hunter2, public_key: keys/rs1.pem }
            - { kid: c, algorithm: HS256, secret: "" }
          forward_claims: { sub: x-user-id, uid: X-User-Id, role: "bad header" }
        """)
        #expect(errors == [
            "jwt.issuer: must not be empty",
            "jwt.audiences: must not be empty",
            "jwt.max_lifetime: must be at least 1s, got '0s'",
            "jwt.jwks_url: must be an https:// URL, got 'http://auth.internal/jwks.json'",
            "jwt.keys[0].public_key: HS256 keys use secret, not public_key",
            "jwt.keys[0].secret: missing required key",
            "jwt.keys[1].secret: RS256 keys use public_key, not secret",
            "jwt.keys[2].secret: must not be empty",
            "jwt.forward_claims.role: expected a header name (RFC 9110 token), got 'bad header'",
            "jwt.forward_claims.uid: duplicate header 'x-user-id' (first at jwt.forward_claims.sub)",
        ])
        #expect(fixture.errors(minimalYAML + "jwt: { issuer: i, audiences: [a], keys: [] }\n")
            == ["jwt.keys: at least one key is required when jwks_url is not set"])
        let config = try? fixture.parse(minimalYAML + "jwt: { issuer: i, audiences: [a], jwks_url: \"https://auth.internal/jwks\" }\n")
        #expect(config?.jwt?.jwksURL == "https://auth.internal/jwks")
    }

    @Test func rateLimitPolicyRules() {
        let errors = fixture.errors(minimalYAML + """
        rate_limits:
          policies:
            a: { limit: 0, window: 1500ms, ipv6_prefix: 0, shadow: maybe }
            b: { limit: 1, window: 1s, key: [client_ip, client_ip, "header:bad header"] }
            "c d": { limit: 1, window: 1s, key: [] }
        """)
        #expect(errors == [
            "rate_limits.policies.a.limit: must be between 1 and 1000000000, got 0",
            "rate_limits.policies.a.window: must be a whole number of seconds, got '1500ms'",
            "rate_limits.policies.a.shadow: expected true or false, got 'maybe'",
            "rate_limits.policies.a.ipv6_prefix: must be between 1 and 128, got 0",
            "rate_limits.policies.b.key[2]: expected header:NAME with a header name, got 'header:bad header'",
            "rate_limits.policies.c d: policy names may only use letters, digits, '_' and '-'",
            "rate_limits.policies.c d.key: must not be empty",
        ])
    }

    @Test func redisURLRules() throws {
        for (url, reason) in [
            ("http://cache:6379", "scheme must be redis:// or rediss://"),
            ("redis://cache", "host:port is missing or invalid"),
            ("redis://cache:6379/x", "database must be a non-negative integer"),
            ("redis://onlypass@cache:6379", "credentials must be written user:password (user may be empty)"),
            ("redis://user:@cache:6379", "password is empty"),
        ] {
            let errors = fixture.errors(minimalYAML + "redis: { url: \"\(url)\" }\n")
            #expect(errors == ["redis.url: \(reason) (expected redis[s]://[user:password@]host:port[/db])"], "\(url)")
        }
        let config = try fixture.parse(minimalYAML + "redis: { url: \"redis://:s%40cret@[::1]:6379\" }\n")
        #expect(config.redis.endpoint == RedisEndpoint(host: "::1", port: 6379, username: nil,
                                                       password: ConfigSecret("s@cret"), database: 0))
    }

    @Test func everyErrorIsReportedAtOnce() {
        let errors = fixture.errors("""
        workers: -1
        listeners:
          - { name: a, adress: 127.0.0.1:0 }
        limits: { max_body_bytes: lots }
        timeouts: { idle: forever }
        upstreams: { u: { endpoints: [] } }
        routes:
          - { name: r, upstream: nope }
        """)
        #expect(errors == [
            "workers: must be between 1 and 1024, got -1",
            "listeners[0].adress: unknown key (did you mean 'address'?)",
            "listeners[0].address: missing required key",
            "limits.max_body_bytes: expected a size like 10MiB, got 'lots'",
            "timeouts.idle: expected a duration like 20ms, 30s, 15m, 2h or 7d, got 'forever'",
            "upstreams.u.endpoints: must not be empty",
            "routes[0].upstream: unknown upstream 'nope' (defined: u)",
        ])
    }

    @Test func errorsPrintOnePerLine() {
        let errors = ConfigErrors(errors: [ConfigError(path: "a.b", reason: "x"), ConfigError(path: "c[0]", reason: "y")])
        #expect(errors.description == "a.b: x\nc[0]: y")
    }

    @Test func suggestions() {
        #expect(closestMatch(to: "adress", in: ["name", "address"]) == "address")
        #expect(closestMatch(to: "max_body", in: ["max_header_bytes", "max_body_bytes"]) == "max_body_bytes")
        #expect(closestMatch(to: "zzzzzz", in: ["name", "address"]) == nil)
        #expect(levenshtein("kitten", "sitting") == 3)
    }
}

@Suite("Config: listener http2 limits")
struct HTTP2ConfigTests {
    let fixture: ConfigFixture
    init() throws { fixture = try ConfigFixture() }

    @Test func defaultsAndOverrides() throws {
        let yaml = """
        listeners:
          - name: a
            address: 127.0.0.1:0
            protocols: [h2c, http/1.1]
            http2: { max_concurrent_streams: 64, initial_window_size: 1MiB, reset_burst: 10 }
          - name: b
            address: 127.0.0.1:0
        upstreams:
          u: { endpoints: [127.0.0.1:1] }
        routes:
          - { name: r, match: { path_prefix: / }, upstream: u }
        """
        let config = try ConfigLoader.parse(yaml: yaml, environment: [:], baseDirectory: fixture.directory)
        #expect(config.listeners[0].http2.maxConcurrentStreams == 64)
        #expect(config.listeners[0].http2.initialWindowSize == 1_048_576)
        #expect(config.listeners[0].http2.resetBurst == 10)
        #expect(config.listeners[0].http2.resetRate == HTTP2Config.defaults.resetRate)
        #expect(config.listeners[1].http2 == .defaults)
    }

    @Test func badValuesAreReported() {
        let errors = fixture.errors("""
        listeners:
          - name: a
            address: 127.0.0.1:0
            http2: { max_concurrent_streams: 0, initial_window_size: 4GiB, max_streams: 3 }
        """)
        #expect(errors.contains { $0.hasPrefix("listeners[0].http2.max_concurrent_streams:") })
        #expect(errors.contains("listeners[0].http2.initial_window_size: must be at most 2147483647 bytes (RFC 9113 §6.5.2)"))
        #expect(errors.contains { $0.hasPrefix("listeners[0].http2.max_streams: unknown key") })
    }
}
