import Foundation
internal import Yams

/// Decoding `gateway.yaml` node trees into `GatewayConfig`, validating as we go.
///
/// Each section decoder records errors in the shared `ConfigReader` and substitutes a default so the
/// walk continues; cross references (route → upstream, route → policy, auth → jwt) are checked after
/// the sections they point to, using the *names* present in the file even when a section had errors,
/// so one typo does not cascade into a dozen "unknown upstream" lines.
extension GatewayConfig {
    static let keys = ["workers", "listeners", "admin", "client_ip", "limits", "timeouts", "redis",
                       "cors", "jwt", "rate_limits", "upstreams", "routes", "log", "tracing"]

    static func decode(_ root: Node, reader r: ConfigReader) -> GatewayConfig? {
        guard case .mapping = root else {
            r.fail("config", "expected a mapping of sections (workers, listeners, routes, ...) at the top level")
            return nil
        }
        guard let m = r.mapping(root, at: "", keys: keys) else { return nil }

        let workers = m["workers"].flatMap { r.int($0, at: "workers", range: 1...1024) }
            ?? ProcessInfo.processInfo.activeProcessorCount

        let listeners = r.required(m, "listeners").flatMap { decodeListeners($0, reader: r) } ?? []
        let admin = decodeAdmin(m["admin"], reader: r)
        checkAddresses(listeners: listeners, admin: admin, reader: r)

        let clientIP = decodeClientIP(m["client_ip"], reader: r)
        let limits = decodeLimits(m["limits"], reader: r)
        let timeouts = decodeTimeouts(m["timeouts"], reader: r)
        let redis = decodeRedis(m["redis"], reader: r)
        let cors = m["cors"].flatMap { decodeCORS($0, reader: r) }
        let jwt = m["jwt"].flatMap { decodeJWT($0, reader: r) }
        let (rateLimits, policyNames) = decodeRateLimits(m["rate_limits"], reader: r)
        let (upstreams, upstreamNames) = decodeUpstreams(m["upstreams"], reader: r)
        let routes = m["routes"].flatMap {
            decodeRoutes($0, upstreamNames: upstreamNames, policyNames: policyNames,
                         hasJWT: m["jwt"] != nil, jwtNode: m["jwt"], reader: r)
        } ?? []
        checkSplitClaims(routes, jwt: jwt, reader: r)
        checkRouteCaches(routes, redis: redis, reader: r)

        var log = LogConfig.defaults
        if let node = m["log"], let lm = r.mapping(node, at: "log", keys: ["access", "level", "format"]) {
            log = LogConfig(access: lm["access"].flatMap { r.bool($0, at: lm.path("access")) } ?? true)
            decodeOperatorLog(lm, reader: r, into: &log)
        }

        let tracing = decodeTracing(m["tracing"], reader: r)
        guard r.errors.isEmpty else { return nil }
        return GatewayConfig(workers: workers, listeners: listeners, admin: admin, clientIP: clientIP,
                             limits: limits, timeouts: timeouts, redis: redis, cors: cors, jwt: jwt,
                             rateLimits: rateLimits, upstreams: upstreams, routes: routes, log: log, tracing: tracing)
    }

    // MARK: listeners, admin

    private static func decodeListeners(_ node: Node, reader r: ConfigReader) -> [ListenerConfig]? {
        guard let items = r.sequence(node, at: "listeners") else { return nil }
        if items.isEmpty { r.fail("listeners", "at least one listener is required") }
        var listeners: [ListenerConfig] = []
        var names: [(key: String, path: String)] = []
        // Judged from the raw keys, so a listener whose tls section has errors still counts as TLS.
        var anyTLS = false
        var firstRedirect: Int?
        for (index, item) in items.enumerated() {
            let path = "listeners[\(index)]"
            guard let m = r.mapping(item, at: path, keys: ["name", "address", "protocols", "tls", "redirect_to_https", "http2"])
            else { continue }
            let name = r.required(m, "name").flatMap { r.name($0, at: m.path("name")) }
            if let name { names.append((name, m.path("name"))) }
            let address = r.required(m, "address").flatMap { r.address($0, at: m.path("address")) }
            let tls = m["tls"].flatMap { decodeTLS($0, at: m.path("tls"), reader: r) }
            let hasTLS = m["tls"] != nil
            anyTLS = anyTLS || hasTLS

            var protocols: [ApplicationProtocol] = hasTLS ? [.h2, .http1_1] : [.http1_1]
            if let node = m["protocols"], let list: [ApplicationProtocol] = r.list(node, at: m.path("protocols"), nonEmpty: true, {
                r.choice($0, at: $1)
            }) {
                protocols = list
                r.reportDuplicates(list.enumerated().map { ($1, "\(m.path("protocols"))[\($0)]") }) {
                    "protocol '\($0.rawValue)'"
                }
                for (i, proto) in list.enumerated() {
                    let itemPath = "\(m.path("protocols"))[\(i)]"
                    if proto == .h2, !hasTLS {
                        r.fail(itemPath, "h2 needs tls (ALPN); use h2c for cleartext HTTP/2")
                    } else if proto == .h2c, hasTLS {
                        r.fail(itemPath, "h2c is cleartext HTTP/2; on a tls listener use h2")
                    }
                }
            }

            let redirect = m["redirect_to_https"].flatMap { r.bool($0, at: m.path("redirect_to_https")) } ?? false
            if redirect, firstRedirect == nil { firstRedirect = index }
            if redirect, hasTLS {
                r.fail(m.path("redirect_to_https"), "only allowed on a listener without tls")
            }
            let http2 = m["http2"].flatMap { decodeHTTP2($0, at: m.path("http2"), reader: r) } ?? .defaults
            if let name, let address {
                listeners.append(ListenerConfig(name: name, address: address, protocols: protocols,
                                                tls: tls, redirectToHTTPS: redirect, http2: http2))
            }
        }
        r.reportDuplicates(names) { "listener name '\($0)'" }
        if !anyTLS, let index = firstRedirect {
            r.fail("listeners[\(index)].redirect_to_https", "no listener has tls to redirect to")
        }
        return listeners
    }

    /// `listeners[].http2`: every key optional, defaults from `HTTP2Config.defaults`.
    private static func decodeHTTP2(_ node: Node, at path: String, reader r: ConfigReader) -> HTTP2Config? {
        guard let m = r.mapping(node, at: path, keys: [
            "max_concurrent_streams", "initial_window_size", "max_header_list_size", "reset_burst", "reset_rate",
        ]) else { return nil }
        let d = HTTP2Config.defaults
        return HTTP2Config(
            maxConcurrentStreams: m["max_concurrent_streams"].flatMap {
                r.int($0, at: m.path("max_concurrent_streams"), range: 1...10_000)
            } ?? d.maxConcurrentStreams,
            initialWindowSize: m["initial_window_size"].flatMap {
                r.size($0, at: m.path("initial_window_size"), minimum: 1)
            }.flatMap { size in
                // RFC 9113 §6.5.2: at most 2^31-1.
                if size > Int(Int32.max) {
                    r.fail(m.path("initial_window_size"), "must be at most 2147483647 bytes (RFC 9113 §6.5.2)")
                    return nil
                }
                return size
            } ?? d.initialWindowSize,
            maxHeaderListSize: m["max_header_list_size"].flatMap { r.size($0, at: m.path("max_header_list_size"), minimum: 1) },
            resetBurst: m["reset_burst"].flatMap { r.int($0, at: m.path("reset_burst"), range: 1...100_000) } ?? d.resetBurst,
            resetRate: m["reset_rate"].flatMap { r.int($0, at: m.path("reset_rate"), range: 1...100_000) } ?? d.resetRate
        )
    }

    private static func decodeTLS(_ node: Node, at path: String, reader r: ConfigReader) -> TLSConfig? {
        guard let m = r.mapping(node, at: path, keys: ["min_version", "certificates", "handshake_timeout"]) else {
            return nil
        }
        let minVersion: TLSVersion = m["min_version"].flatMap { r.choice($0, at: m.path("min_version")) } ?? .v1_2
        let handshakeTimeout = m["handshake_timeout"].flatMap {
            r.duration($0, at: m.path("handshake_timeout"))
        } ?? .seconds(10)
        let certificates: [CertificateConfig]? = r.required(m, "certificates").flatMap { node in
            r.list(node, at: m.path("certificates"), nonEmpty: true) { item, itemPath in
                guard let pair = r.mapping(item, at: itemPath, keys: ["cert", "key"]) else { return nil }
                let cert = r.required(pair, "cert").flatMap { r.file($0, at: pair.path("cert")) }
                let key = r.required(pair, "key").flatMap { r.file($0, at: pair.path("key")) }
                guard let cert, let key else { return nil }
                return CertificateConfig(cert: cert, key: key)
            }
        }
        guard let certificates else { return nil }
        return TLSConfig(minVersion: minVersion, certificates: certificates, handshakeTimeout: handshakeTimeout)
    }

    private static func decodeAdmin(_ node: Node?, reader r: ConfigReader) -> AdminConfig {
        let fallback = AdminConfig(address: HostPort(host: "127.0.0.1", port: 9901))
        guard let node, let m = r.mapping(node, at: "admin", keys: ["address"]) else { return fallback }
        return m["address"].flatMap { r.address($0, at: "admin.address") }.map(AdminConfig.init) ?? fallback
    }

    /// Two sockets cannot bind the same address; port 0 asks the kernel for a fresh port, so it never clashes.
    private static func checkAddresses(listeners: [ListenerConfig], admin: AdminConfig, reader r: ConfigReader) {
        var seen: [HostPort: String] = [:]
        for (index, listener) in listeners.enumerated() where listener.address.port != 0 {
            if let first = seen[listener.address] {
                r.fail("listeners[\(index)].address", "address \(listener.address) is already used by \(first)")
            } else {
                seen[listener.address] = "listeners[\(index)]"
            }
        }
        if admin.address.port != 0, let first = seen[admin.address] {
            r.fail("admin.address", "address \(admin.address) is already used by \(first)")
        }
    }

    // MARK: client_ip, limits, timeouts, redis

    private static func decodeClientIP(_ node: Node?, reader r: ConfigReader) -> ClientIPConfig {
        var proxies: [TrustedProxy] = []
        var header = "cf-connecting-ip"
        if let node, let m = r.mapping(node, at: "client_ip", keys: ["trusted_proxies", "header"]) {
            if let value = m["trusted_proxies"] {
                let path = m.path("trusted_proxies")
                if case .scalar = value {
                    proxies = trustedProxy(value, at: path, reader: r).map { [$0] } ?? []
                } else {
                    proxies = r.list(value, at: path) { trustedProxy($0, at: $1, reader: r) } ?? []
                }
            }
            if let value = m["header"] {
                header = headerName(value, at: m.path("header"), reader: r) ?? header
            }
        }
        return ClientIPConfig(trustedProxies: proxies, header: header)
    }

    private static func trustedProxy(_ node: Node, at path: String, reader r: ConfigReader) -> TrustedProxy? {
        guard let value = r.text(node, at: path, expected: "a CIDR") else { return nil }
        if value == "cloudflare" { return .cloudflare }
        return cidr(value, at: path, presetHint: true, reader: r).map(TrustedProxy.network)
    }

    private static func cidr(_ value: String, at path: String, presetHint: Bool, reader r: ConfigReader) -> IPNetwork? {
        switch IPNetwork.parse(value) {
        case .success(let network):
            return network
        case .failure(.prefixOutOfRange(let max)):
            r.fail(path, "prefix length must be 0...\(max), got '\(value)'")
        case .failure(.hostBitsSet(let suggestion)):
            r.fail(path, "'\(value)' has host bits set (did you mean '\(suggestion)'?)")
        case .failure(.syntax):
            var reason = "expected a CIDR like 10.0.0.0/8 or 2001:db8::/32"
            if presetHint { reason += ", or the preset 'cloudflare'" }
            reason += ", got '\(value)'"
            if presetHint, value != "cloudflare", levenshtein(value.lowercased(), "cloudflare") <= 2 {
                reason += " (did you mean 'cloudflare'?)"
            }
            r.fail(path, reason)
        }
        return nil
    }

    private static func headerName(_ node: Node, at path: String, reader r: ConfigReader) -> String? {
        guard let value = r.nonEmptyString(node, at: path) else { return nil }
        guard isHTTPToken(value) else {
            r.fail(path, "expected a header name (RFC 9110 token), got '\(value)'")
            return nil
        }
        return value.lowercased()
    }

    private static func decodeLimits(_ node: Node?, reader r: ConfigReader) -> LimitsConfig {
        var header = 16 * 1024, body = 10 * 1024 * 1024
        if let node, let m = r.mapping(node, at: "limits", keys: ["max_header_bytes", "max_body_bytes"]) {
            header = m["max_header_bytes"].flatMap { r.size($0, at: m.path("max_header_bytes"), minimum: 1024) } ?? header
            body = m["max_body_bytes"].flatMap { r.size($0, at: m.path("max_body_bytes")) } ?? body
        }
        return LimitsConfig(maxHeaderBytes: header, maxBodyBytes: body)
    }

    private static func decodeTimeouts(_ node: Node?, reader r: ConfigReader) -> TimeoutsConfig {
        var clientHeader: Duration = .seconds(10), idle: Duration = .seconds(60), drain: Duration = .seconds(30)
        var tunnelIdle: Duration = .seconds(3600)
        var drainDelay = OperationsDefaults.drainDelay
        if let node, let m = r.mapping(node, at: "timeouts", keys: ["client_header", "idle", "drain", "tunnel_idle", "drain_delay"]) {
            tunnelIdle = m["tunnel_idle"].flatMap { r.duration($0, at: m.path("tunnel_idle"), minimum: .seconds(1)) } ?? tunnelIdle
            drainDelay = decodeDrainDelay(m, reader: r) ?? drainDelay
            clientHeader = m["client_header"].flatMap { r.duration($0, at: m.path("client_header")) } ?? clientHeader
            idle = m["idle"].flatMap { r.duration($0, at: m.path("idle")) } ?? idle
            drain = m["drain"].flatMap { r.duration($0, at: m.path("drain"), minimum: .zero) } ?? drain
        }
        var timeouts = TimeoutsConfig(clientHeader: clientHeader, idle: idle, drain: drain, tunnelIdle: tunnelIdle)
        timeouts.drainDelay = drainDelay
        return timeouts
    }

    // MARK: cors

    private static func decodeCORS(_ node: Node, reader r: ConfigReader) -> CORSConfig? {
        guard let m = r.mapping(node, at: "cors", keys: ["allowed_origins", "allowed_methods", "allowed_headers",
                                                         "exposed_headers", "allow_credentials", "max_age"])
        else { return nil }
        let credentials = m["allow_credentials"].flatMap { r.bool($0, at: m.path("allow_credentials")) } ?? false
        let origins: [CORSOrigin] = r.required(m, "allowed_origins").flatMap { node in
            r.list(node, at: m.path("allowed_origins")) { item, path -> CORSOrigin? in
                guard let value = r.nonEmptyString(item, at: path) else { return nil }
                switch CORSOrigin.parse(value) {
                case .failure(let invalid):
                    r.fail(path, invalid.reason)
                    return nil
                case .success(.any) where credentials:
                    r.fail(path, "'*' cannot be combined with allow_credentials: true (browsers reject it); list the origins")
                    return nil
                case .success(let origin):
                    return origin
                }
            }
        } ?? []
        let methods = m["allowed_methods"].flatMap { methodList($0, at: m.path("allowed_methods"), reader: r) }
            ?? ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        let allowed = m["allowed_headers"].flatMap { headerList($0, at: m.path("allowed_headers"), reader: r) } ?? []
        let exposed = m["exposed_headers"].flatMap { headerList($0, at: m.path("exposed_headers"), reader: r) } ?? []
        let maxAge = m["max_age"].flatMap {
            r.duration($0, at: m.path("max_age"), minimum: .zero, wholeSeconds: true)
        }
        return CORSConfig(allowedOrigins: origins, allowedMethods: methods, allowedHeaders: allowed,
                          exposedHeaders: exposed, allowCredentials: credentials, maxAge: maxAge)
    }

    /// Methods are case-sensitive tokens (RFC 9110 §9.1); we require the conventional uppercase.
    private static func methodList(_ node: Node, at path: String, reader r: ConfigReader) -> [String]? {
        let methods: [String]? = r.list(node, at: path, nonEmpty: true) { item, itemPath in
            guard let value = r.nonEmptyString(item, at: itemPath) else { return nil }
            guard isHTTPToken(value) else {
                r.fail(itemPath, "expected an HTTP method like GET, got '\(value)'")
                return nil
            }
            guard value == value.uppercased() else {
                r.fail(itemPath, "methods must be uppercase, got '\(value)' (did you mean '\(value.uppercased())'?)")
                return nil
            }
            return value
        }
        if let methods {
            r.reportDuplicates(methods.enumerated().map { ($1, "\(path)[\($0)]") }) { "method '\($0)'" }
        }
        return methods
    }

    private static func headerList(_ node: Node, at path: String, reader r: ConfigReader) -> [String]? {
        let headers: [String]? = r.list(node, at: path) { headerName($0, at: $1, reader: r) }
        if let headers {
            r.reportDuplicates(headers.enumerated().map { ($1, "\(path)[\($0)]") }) { "header '\($0)'" }
        }
        return headers
    }

    // MARK: jwt

    private static func decodeJWT(_ node: Node, reader r: ConfigReader) -> JWTConfig? {
        guard let m = r.mapping(node, at: "jwt", keys: ["issuer", "audiences", "leeway", "max_lifetime", "keys",
                                                        "jwks_url", "jwks_ca", "jwks_refresh", "forward_claims"] + identityJWTKeys)
        else { return nil }
        if m["providers"] != nil { return decodeJWTProviders(m, forwardClaims: forwardClaims(m, reader: r), reader: r) }
        let (issuer, audiences, leeway, maxLifetime) = tokenRules(m, reader: r)

        var jwksURL: String?
        if let node = m["jwks_url"], let url = r.nonEmptyString(node, at: m.path("jwks_url")) {
            // Keys fetched over plain HTTP could be swapped by anyone on the path.
            if url.hasPrefix("https://"), url.count > "https://".count,
               URL(string: url)?.host.map({ !$0.isEmpty }) == true {
                jwksURL = url
            } else {
                r.fail(m.path("jwks_url"), "must be an https:// URL, got '\(url)'")
            }
        }

        var jwksCA: String?
        if let node = m["jwks_ca"] {
            jwksCA = r.file(node, at: m.path("jwks_ca"))
            if m["jwks_url"] == nil { r.fail(m.path("jwks_ca"), "only applies with jwks_url") }
        }
        var refresh = JWKSRefreshConfig()
        if let node = m["jwks_refresh"] {
            if m["jwks_url"] == nil { r.fail(m.path("jwks_refresh"), "only applies with jwks_url") }
            refresh = decodeJWKSRefresh(node, at: m.path("jwks_refresh"), reader: r)
        }

        var keys: [JWTKeyConfig] = []
        if let node = m["keys"] {
            keys = r.list(node, at: m.path("keys")) { jwtKey($0, at: $1, reader: r) } ?? []
            if let items = r.sequence(node, at: m.path("keys")) {
                if items.isEmpty, m["jwks_url"] == nil {
                    r.fail(m.path("keys"), "at least one key is required when jwks_url is not set")
                }
            }
            r.reportDuplicates(keys.enumerated().map { ($1.kid, "\(m.path("keys"))[\($0)].kid") }) { "kid '\($0)'" }
        } else if m["jwks_url"] == nil {
            r.fail(m.path("keys"), "missing required key (or set jwks_url)")
        }

        let claims = forwardClaims(m, reader: r)
        guard let issuer, let audiences else { return nil }
        var config = JWTConfig(issuer: issuer, audiences: audiences, leeway: leeway, maxLifetime: maxLifetime,
                               keys: keys, jwksURL: jwksURL, jwksCA: jwksCA, jwksRefresh: refresh, forwardClaims: claims)
        config.identity = decodeJWTIdentity(m, reader: r)
        return config
    }

    private static func forwardClaims(_ m: ConfigMapping, reader r: ConfigReader) -> [ForwardedClaim] {
        var claims: [ForwardedClaim] = []
        if let node = m["forward_claims"], let map = r.mapping(node, at: m.path("forward_claims"), keys: nil) {
            for (claim, value) in map.entries {
                guard let header = headerName(value, at: map.path(claim), reader: r) else { continue }
                claims.append(ForwardedClaim(claim: claim, header: header))
            }
            r.reportDuplicates(claims.map { ($0.header, map.path($0.claim)) }) { "header '\($0)'" }
        }
        return claims
    }

    static func decodeJWKSRefresh(_ node: Node, at path: String, reader r: ConfigReader) -> JWKSRefreshConfig {
        var refresh = JWKSRefreshConfig()
        guard let m = r.mapping(node, at: path, keys: ["min", "max", "default", "unknown_kid_interval", "timeout"])
        else { return refresh }
        let day = Duration.seconds(86_400)
        if let node = m["min"], let value = r.duration(node, at: m.path("min"), minimum: .seconds(1), maximum: day) {
            refresh.min = value
        }
        if let node = m["max"], let value = r.duration(node, at: m.path("max"), minimum: .seconds(1), maximum: day) {
            refresh.max = value
        }
        if let node = m["default"], let value = r.duration(node, at: m.path("default"), minimum: .seconds(1), maximum: day) {
            refresh.defaultInterval = value
        }
        if let node = m["unknown_kid_interval"],
           let value = r.duration(node, at: m.path("unknown_kid_interval"), minimum: .seconds(1), maximum: day) {
            refresh.unknownKidInterval = value
        }
        if let node = m["timeout"],
           let value = r.duration(node, at: m.path("timeout"), minimum: .milliseconds(100), maximum: .seconds(60)) {
            refresh.timeout = value
        }
        if refresh.max < refresh.min {
            r.fail(m.path("max"), "must be at least min (\(ConfigSyntax.format(refresh.min)))")
        }
        return refresh
    }

    static func jwtKey(_ node: Node, at path: String, reader r: ConfigReader) -> JWTKeyConfig? {
        guard let m = r.mapping(node, at: path, keys: ["kid", "algorithm", "secret", "public_key"]) else { return nil }
        let kid = r.required(m, "kid").flatMap { r.nonEmptyString($0, at: m.path("kid")) }
        let algorithm: JWTAlgorithm? = r.required(m, "algorithm").flatMap { r.choice($0, at: m.path("algorithm")) }
        guard let algorithm else { return nil }
        var material: JWTKeyMaterial?
        if algorithm.isHMAC {
            if m["public_key"] != nil {
                r.fail(m.path("public_key"), "\(algorithm.rawValue) keys use secret, not public_key")
            }
            if let node = r.required(m, "secret"), let secret = r.nonEmptyString(node, at: m.path("secret")) {
                material = .secret(ConfigSecret(secret))
            }
        } else {
            if m["secret"] != nil {
                r.fail(m.path("secret"), "\(algorithm.rawValue) keys use public_key, not secret")
            }
            if let node = r.required(m, "public_key"), let file = r.file(node, at: m.path("public_key")) {
                material = .publicKeyFile(file)
            }
        }
        guard let kid, let material else { return nil }
        return JWTKeyConfig(kid: kid, algorithm: algorithm, material: material)
    }

    // MARK: rate_limits

    private static func decodeRateLimits(_ node: Node?, reader r: ConfigReader) -> (RateLimitsConfig, [String]) {
        var onStoreError = StoreErrorMode.allow
        var headers = RateLimitHeaderStyle.draft6
        var exempt: [IPNetwork] = []
        var policies: [RateLimitPolicy] = []
        var names: [String] = []
        var maxKeys = 100_000
        if let node, let m = r.mapping(node, at: "rate_limits", keys: ["on_store_error", "headers", "exempt_cidrs", "policies", "max_keys"]) {
            maxKeys = m["max_keys"].flatMap { r.int($0, at: m.path("max_keys"), range: 100...100_000_000) } ?? maxKeys
            onStoreError = m["on_store_error"].flatMap { r.choice($0, at: m.path("on_store_error")) } ?? onStoreError
            headers = m["headers"].flatMap { r.choice($0, at: m.path("headers")) } ?? headers
            if let node = m["exempt_cidrs"] {
                exempt = r.list(node, at: m.path("exempt_cidrs")) { item, path in
                    r.text(item, at: path, expected: "a CIDR").flatMap { cidr($0, at: path, presetHint: false, reader: r) }
                } ?? []
            }
            if let node = m["policies"], let map = r.mapping(node, at: m.path("policies"), keys: nil) {
                for (name, value) in map.entries {
                    names.append(name)
                    let path = map.path(name)
                    if !name.unicodeScalars.allSatisfy({ $0.isASCIILetterOrDigit || $0 == "_" || $0 == "-" }) {
                        r.fail(path, "policy names may only use letters, digits, '_' and '-'")
                    }
                    if let policy = decodePolicy(name: name, value, at: path, reader: r) {
                        policies.append(policy)
                    }
                }
            }
        }
        return (RateLimitsConfig(onStoreError: onStoreError, headers: headers, exemptCIDRs: exempt,
                                 policies: policies, maxKeys: maxKeys), names)
    }

    private static func decodePolicy(name: String, _ node: Node, at path: String, reader r: ConfigReader) -> RateLimitPolicy? {
        guard let m = r.mapping(node, at: path, keys: ["limit", "window", "key", "algorithm", "shadow", "ipv6_prefix"] + tierPolicyKeys)
        else { return nil }
        if tierPolicyKeys.contains(where: { m[$0] != nil }) {
            let tiers = decodeTiers(m, reader: r)
            let key = m["key"].flatMap { policyKey($0, at: m.path("key"), reader: r) } ?? [.clientIP]
            guard let tiers else { return nil }
            var policy = RateLimitPolicy(
                name: name, limit: tiers.defaultLimit.limit, window: tiers.defaultLimit.window, key: key,
                algorithm: m["algorithm"].flatMap { r.choice($0, at: m.path("algorithm")) } ?? .slidingWindow,
                shadow: m["shadow"].flatMap { r.bool($0, at: m.path("shadow")) } ?? false,
                ipv6Prefix: m["ipv6_prefix"].flatMap { r.int($0, at: m.path("ipv6_prefix"), range: 1...128) } ?? 64)
            policy.tiers = tiers
            return policy
        }
        let limit = r.required(m, "limit").flatMap { r.int($0, at: m.path("limit"), range: 1...1_000_000_000) }
        // Whole seconds: RateLimit-Policy reports the window as `w=<seconds>`.
        let window = r.required(m, "window").flatMap {
            r.duration($0, at: m.path("window"), minimum: .seconds(1), wholeSeconds: true)
        }
        var key: [RateLimitKeyPart]? = [.clientIP]
        if let node = m["key"] { key = policyKey(node, at: m.path("key"), reader: r) }
        let algorithm: RateLimitAlgorithm = m["algorithm"].flatMap { r.choice($0, at: m.path("algorithm")) } ?? .slidingWindow
        let shadow = m["shadow"].flatMap { r.bool($0, at: m.path("shadow")) } ?? false
        let prefix = m["ipv6_prefix"].flatMap { r.int($0, at: m.path("ipv6_prefix"), range: 1...128) } ?? 64
        guard let limit, let window, let key else { return nil }
        return RateLimitPolicy(name: name, limit: limit, window: window, key: key, algorithm: algorithm,
                               shadow: shadow, ipv6Prefix: prefix)
    }

    private static func policyKey(_ node: Node, at keyPath: String, reader r: ConfigReader) -> [RateLimitKeyPart]? {
        if case .scalar = node { return keyPart(node, at: keyPath, reader: r).map { [$0] } }
        let key = r.list(node, at: keyPath, nonEmpty: true) { keyPart($0, at: $1, reader: r) }
        if let key {
            r.reportDuplicates(key.enumerated().map { ($1.description, "\(keyPath)[\($0)]") }) { "key part '\($0)'" }
        }
        return key
    }

    private static func keyPart(_ node: Node, at path: String, reader r: ConfigReader) -> RateLimitKeyPart? {
        guard let value = r.nonEmptyString(node, at: path) else { return nil }
        switch value {
        case "client_ip": return .clientIP
        case "jwt_subject": return .jwtSubject
        case "route": return .route
        default: break
        }
        if value.hasPrefix("claim:") {
            let claim = String(value.dropFirst("claim:".count))
            guard !claim.isEmpty, !claim.hasPrefix("."), !claim.hasSuffix("."), !claim.contains("..") else {
                r.fail(path, "expected claim:PATH with a dotted claim path such as claim:sub, got '\(value)'")
                return nil
            }
            return claim == "sub" ? .jwtSubject : .claim(claim)
        }
        if value.hasPrefix("header:") {
            let header = String(value.dropFirst("header:".count))
            guard isHTTPToken(header) else {
                r.fail(path, "expected header:NAME with a header name, got '\(value)'")
                return nil
            }
            return .header(header.lowercased())
        }
        var reason = "expected client_ip, jwt_subject, claim:PATH, route or header:NAME, got '\(value)'"
        if let suggestion = closestMatch(to: value, in: ["client_ip", "jwt_subject", "route"]) {
            reason += " (did you mean '\(suggestion)'?)"
        }
        r.fail(path, reason)
        return nil
    }

    // MARK: upstreams

    private static func decodeUpstreams(_ node: Node?, reader r: ConfigReader) -> ([UpstreamConfig], [String]) {
        guard let node, let map = r.mapping(node, at: "upstreams", keys: nil) else { return ([], []) }
        var upstreams: [UpstreamConfig] = []
        for (name, value) in map.entries {
            let path = map.path(name)
            if !name.unicodeScalars.allSatisfy({ $0.isASCIILetterOrDigit || "_-.".unicodeScalars.contains($0) }) {
                r.fail(path, "upstream names may only use letters, digits, '_', '-' and '.'")
            }
            guard let m = r.mapping(value, at: path, keys: ["endpoints", "connect_timeout", "response_timeout",
                                                            "max_connections", "health_check", "load_balancing",
                                                            "idle_timeout", "outlier_detection", "retries"])
            else { continue }
            let endpoints: [HostPort]? = r.required(m, "endpoints").flatMap {
                r.list($0, at: m.path("endpoints"), nonEmpty: true) { r.address($0, at: $1, allowedPorts: 1...65535) }
            }
            if let endpoints {
                r.reportDuplicates(endpoints.enumerated().map { ($1, "\(m.path("endpoints"))[\($0)]") }) { "endpoint \($0)" }
            }
            let connect = m["connect_timeout"].flatMap { r.duration($0, at: m.path("connect_timeout")) } ?? .seconds(1)
            let response = m["response_timeout"].flatMap { r.duration($0, at: m.path("response_timeout")) } ?? .seconds(15)
            let maxConnections = m["max_connections"].flatMap {
                r.int($0, at: m.path("max_connections"), range: 1...65536)
            } ?? 256
            var health: HealthCheckConfig?
            if let node = m["health_check"], let hc = r.mapping(node, at: m.path("health_check"),
                                                                keys: ["path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold"]) {
                var checkPath = "/health"
                if let node = hc["path"], let value = r.nonEmptyString(node, at: hc.path("path")) {
                    if value.hasPrefix("/") { checkPath = value } else {
                        r.fail(hc.path("path"), "must start with '/', got '\(value)' (did you mean '/\(value)'?)")
                    }
                }
                let interval = hc["interval"].flatMap { r.duration($0, at: hc.path("interval"), minimum: .milliseconds(100)) }
                    ?? .seconds(5)
                let timeout = hc["timeout"].flatMap { r.duration($0, at: hc.path("timeout")) } ?? .seconds(2)
                let healthy = hc["healthy_threshold"].flatMap { r.int($0, at: hc.path("healthy_threshold"), range: 1...100) } ?? 2
                let unhealthy = hc["unhealthy_threshold"].flatMap { r.int($0, at: hc.path("unhealthy_threshold"), range: 1...100) } ?? 2
                health = HealthCheckConfig(path: checkPath, interval: interval, timeout: timeout,
                                           healthyThreshold: healthy, unhealthyThreshold: unhealthy)
            }
            let balancing: LoadBalancing = m["load_balancing"].flatMap { r.choice($0, at: m.path("load_balancing")) } ?? .roundRobin
            let idle = m["idle_timeout"].flatMap { r.duration($0, at: m.path("idle_timeout")) } ?? .seconds(4)
            var outlier = OutlierDetectionConfig.defaults
            if let node = m["outlier_detection"], let od = r.mapping(node, at: m.path("outlier_detection"),
                                                                      keys: ["consecutive_5xx", "base_ejection_time"]) {
                outlier = OutlierDetectionConfig(
                    consecutive5xx: od["consecutive_5xx"].flatMap { r.int($0, at: od.path("consecutive_5xx"), range: 1...1000) }
                        ?? outlier.consecutive5xx,
                    baseEjectionTime: od["base_ejection_time"].flatMap { r.duration($0, at: od.path("base_ejection_time")) }
                        ?? outlier.baseEjectionTime)
            }
            var retries = RetryConfig.defaults
            if let node = m["retries"], let rm = r.mapping(node, at: m.path("retries"), keys: ["attempts", "methods", "budget_percent"]) {
                retries = RetryConfig(
                    attempts: rm["attempts"].flatMap { r.int($0, at: rm.path("attempts"), range: 0...3) } ?? retries.attempts,
                    methods: rm["methods"].flatMap { node in
                        r.list(node, at: rm.path("methods"), nonEmpty: false) { r.nonEmptyString($0, at: $1).map { $0.uppercased() } }
                    } ?? retries.methods,
                    budgetPercent: rm["budget_percent"].flatMap { r.int($0, at: rm.path("budget_percent"), range: 0...100) }
                        ?? retries.budgetPercent)
            }
            if let endpoints {
                upstreams.append(UpstreamConfig(name: name, endpoints: endpoints, connectTimeout: connect,
                                                responseTimeout: response, maxConnections: maxConnections,
                                                healthCheck: health, loadBalancing: balancing, idleTimeout: idle,
                                                outlierDetection: outlier, retries: retries))
            }
        }
        return (upstreams, map.entries.map(\.key))
    }

    // MARK: routes

    private static func decodeRoutes(_ node: Node, upstreamNames: [String], policyNames: [String],
                                     hasJWT: Bool, jwtNode: Node?, reader r: ConfigReader) -> [RouteConfig]? {
        guard let items = r.sequence(node, at: "routes") else { return nil }
        var routes: [RouteConfig] = []
        var names: [(key: String, path: String)] = []
        for (index, item) in items.enumerated() {
            let path = "routes[\(index)]"
            guard let m = r.mapping(item, at: path, keys: ["name", "match", "upstream", "auth", "require_claims",
                                                           "rate_limits", "cors", "cache"] + identityRouteKeys + realtimeRouteKeys)
            else { continue }
            let name = r.required(m, "name").flatMap { r.name($0, at: m.path("name")) }
            if let name { names.append((name, m.path("name"))) }
            let match = m["match"].map { routeMatch($0, at: m.path("match"), reader: r) }
                ?? RouteMatch(host: nil, pathPrefix: "/", methods: nil)

            var upstreamIndex: Int?
            var upstream = m["split"] != nil ? nil : r.required(m, "upstream").flatMap { r.nonEmptyString($0, at: m.path("upstream")) }
            if let upstream {
                upstreamIndex = upstreamNames.firstIndex(of: upstream)
                if upstreamIndex == nil {
                    r.fail(m.path("upstream"), unknown("upstream", upstream, among: upstreamNames))
                }
            }

            let auth: AuthMode = m["auth"].flatMap { r.choice($0, at: m.path("auth")) } ?? .none
            if auth != .none, !hasJWT {
                r.fail(m.path("auth"), "auth: \(auth.rawValue) needs a jwt section")
            }

            var claims: [RequiredClaim] = []
            if let node = m["require_claims"], let map = r.mapping(node, at: m.path("require_claims"), keys: nil) {
                for (claim, value) in map.entries {
                    if let values = r.list(value, at: map.path(claim), nonEmpty: true, { r.text($0, at: $1) }) {
                        claims.append(RequiredClaim(claim: claim, values: values))
                    }
                }
                if auth == .none, !map.entries.isEmpty {
                    r.fail(m.path("require_claims"), "needs auth: required or optional (claims come from a verified token)")
                }
            }

            var policies: [String] = []
            var policyIndices: [Int] = []
            if let node = m["rate_limits"] {
                let listPath = m.path("rate_limits")
                policies = r.list(node, at: listPath) { r.nonEmptyString($0, at: $1) } ?? []
                for (i, policy) in policies.enumerated() {
                    if let found = policyNames.firstIndex(of: policy) {
                        policyIndices.append(found)
                    } else {
                        r.fail("\(listPath)[\(i)]", unknown("rate-limit policy", policy, among: policyNames))
                    }
                }
                r.reportDuplicates(policies.enumerated().map { ($1, "\(listPath)[\($0)]") }) { "policy '\($0)'" }
            }
            let cors = m["cors"].flatMap { r.bool($0, at: m.path("cors")) } ?? true
            let identity = decodeRouteIdentity(m, auth: auth, jwtNode: jwtNode, reader: r)

            let split = decodeSplit(m, upstreamNames: upstreamNames, auth: auth, upstreamGiven: m["upstream"] != nil, reader: r)
            if let split { (upstream, upstreamIndex) = (split.entries.first?.upstream, split.entries.first?.upstreamIndex) }
            let realtime = decodeRouteRealtime(m, reader: r)
            if let name, let upstream, let upstreamIndex {
                routes.append(RouteConfig(name: name, match: match, upstream: upstream, upstreamIndex: upstreamIndex,
                                          auth: auth, requireClaims: claims, rateLimits: policies,
                                          rateLimitPolicyIndices: policyIndices, cors: cors, identity: identity,
                                          split: split, realtime: realtime,
                                          cache: m["cache"].flatMap { decodeRouteCache($0, at: m.path("cache"), reader: r) }))
            }
        }
        r.reportDuplicates(names) { "route name '\($0)'" }
        return routes
    }

    private static func routeMatch(_ node: Node, at path: String, reader r: ConfigReader) -> RouteMatch {
        var host: HostMatch?
        var prefix = "/"
        var methods: [String]?
        var headers: [FieldCondition] = [], cookies: [FieldCondition] = []
        if let m = r.mapping(node, at: path, keys: ["host", "path_prefix", "methods", "headers", "cookies"]) {
            headers = m["headers"].map { fieldConditions($0, at: m.path("headers"), cookies: false, reader: r) } ?? []
            cookies = m["cookies"].map { fieldConditions($0, at: m.path("cookies"), cookies: true, reader: r) } ?? []
            if let node = m["host"], let value = r.nonEmptyString(node, at: m.path("host")) {
                let lower = value.lowercased()
                if lower.hasPrefix("*."), isValidHostname(lower.dropFirst(2)) {
                    host = .wildcard(String(lower.dropFirst(2)))
                } else if isValidHostname(lower[...]) {
                    host = .exact(lower)
                } else {
                    r.fail(m.path("host"), "expected a host like api.example.com or *.example.com, got '\(value)'")
                }
            }
            if let node = m["path_prefix"], let value = r.nonEmptyString(node, at: m.path("path_prefix")) {
                if !value.hasPrefix("/") {
                    r.fail(m.path("path_prefix"), "must start with '/', got '\(value)' (did you mean '/\(value)'?)")
                } else if value.contains(where: { $0 == "?" || $0 == "#" || $0.isWhitespace }) {
                    r.fail(m.path("path_prefix"), "must be a path without query, fragment or spaces, got '\(value)'")
                } else {
                    prefix = value
                }
            }
            if let node = m["methods"] {
                methods = methodList(node, at: m.path("methods"), reader: r)
            }
        }
        return RouteMatch(host: host, pathPrefix: prefix, methods: methods, headers: headers, cookies: cookies)
    }

    static func unknown(_ what: String, _ name: String, among names: [String]) -> String {
        if let suggestion = closestMatch(to: name, in: names) {
            return "unknown \(what) '\(name)' (did you mean '\(suggestion)'?)"
        }
        if names.isEmpty { return "unknown \(what) '\(name)' (none defined)" }
        return "unknown \(what) '\(name)' (defined: \(names.joined(separator: ", ")))"
    }
}
