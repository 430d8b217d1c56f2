import Foundation
import NIOCore
import NIOPosix
import RateLimiter

/// Turns a validated `GatewayConfig` into what runs: the runtime snapshot and the listeners to bind.
/// Everything that can fail at start-up (certificates, features this build does not have) fails
/// here, before any socket is bound.
public enum GatewayBuilder {
    /// Checks that need more than the config text: key material, the JWKS CA bundle. Nothing is
    /// fetched (a JWKS URL is only checked to be https).
    static func unsupportedFeatures(_ config: GatewayConfig) -> [ConfigError] {
        var errors: [ConfigError] = []
        if let jwt = config.jwt {
            if case .failure(let keyErrors) = Authenticator.make(jwt) { errors.append(contentsOf: keyErrors.errors) }
        }
        return errors
    }

    static func runtime(
        _ config: GatewayConfig, configHash: String, status: ServerStatus = ServerStatus(),
        group: EventLoopGroup? = nil, metrics: GatewayMetrics? = nil
    ) throws(ConfigErrors) -> GatewayRuntime {
        var clusters: [String: UpstreamCluster] = [:]
        for upstream in config.upstreams {
            var settings = UpstreamSettings(
                connectTimeout: .init(upstream.connectTimeout),
                responseTimeout: .init(upstream.responseTimeout),
                maxConnections: upstream.maxConnections,
                idleTimeout: .init(upstream.idleTimeout)
            )
            settings.loadBalancing = upstream.loadBalancing
            settings.consecutive5xxToEject = upstream.outlierDetection.consecutive5xx
            settings.baseEjectionTime = .init(upstream.outlierDetection.baseEjectionTime)
            settings.retryAttempts = upstream.retries.attempts
            settings.retryMethods = Set(upstream.retries.methods)
            settings.retryBudgetPercent = upstream.retries.budgetPercent
            settings.healthCheck = upstream.healthCheck
            clusters[upstream.name] = UpstreamCluster(
                name: upstream.name,
                endpoints: upstream.endpoints.map { UpstreamEndpoint(host: $0.host, port: $0.port) },
                settings: settings
            )
        }
        var authenticator: Authenticator? = nil
        if let jwt = config.jwt { authenticator = try Authenticator.make(jwt).get() }
        let cors = config.cors.map(CORSPolicy.init)
        let policies = config.rateLimits.policies.map { policy in
            RateLimitRule(
                spec: PolicySpec(
                    name: policy.name, limit: policy.limit, windowSeconds: Int(policy.window.components.seconds),
                    algorithm: policy.algorithm == .slidingLog ? .slidingLog : .slidingWindow,
                    shadow: policy.shadow, ipv6Prefix: policy.ipv6Prefix
                ),
                key: policy.key, tiers: policy.tiers.map { RateLimitTierRule($0, policy: policy) }
            )
        }
        let routes = config.routes.enumerated().map { index, route in
            var claims: [String: [String]] = [:]
            for required in route.requireClaims { claims[required.claim] = required.values }
            return Route(
                name: route.name, host: route.match.host.map { "\($0)" }, pathPrefix: route.match.pathPrefix,
                methods: route.match.methods, upstreamName: route.upstream, order: index,
                auth: route.auth, requiredClaims: claims, cors: route.cors ? cors : nil,
                rateLimits: route.rateLimitPolicyIndices.map { policies[$0] },
                conditions: Route.conditions(route.match),
                split: route.split.map {
                    TrafficSplit(routeName: route.name, config: $0, forwardClaims: config.jwt?.forwardClaims ?? [],
                                 chosen: metrics?.splitRequests)
                },
                realtime: route.realtime, identity: route.identity,
                cache: route.cache.map { ResponseCache(config: $0, route: route.name, metrics: metrics, redis: config.redis, group: group, stores: status.responseCacheStores) },
                series: metrics?.routeSeries(route.name), cluster: clusters[route.upstream]
            )
        }
        var traffic = TrafficSettings(
            maxHeaderBytes: config.limits.maxHeaderBytes,
            maxBodyBytes: config.limits.maxBodyBytes,
            clientHeaderTimeout: .init(config.timeouts.clientHeader),
            idleTimeout: .init(config.timeouts.idle),
            drainTimeout: .init(config.timeouts.drain),
            tunnelIdleTimeout: .init(config.timeouts.tunnelIdle)
        )
        traffic.drainDelay = .init(config.timeouts.drainDelay)
        status.operations.applyEndpointDrains(to: clusters)
        var rateLimiter: RateLimitService? = nil
        if routes.contains(where: { !$0.rateLimits.isEmpty }) {
            let backend: RateLimitService.Backend
            if config.redis.isEnabled, let group {
                backend = .redis(status.rateLimitStores.redisStore(config: config.redis, group: group, metrics: metrics))
            } else {
                backend = .inProcess(status.rateLimitStores.inProcess(maxKeys: config.rateLimits.maxKeys))
            }
            rateLimiter = RateLimitService(
                backend: backend, failOpen: config.rateLimits.onStoreError == .allow,
                headerStyle: config.rateLimits.headers == .ietfDraft10 ? .ietfDraft10 : .draft6,
                exempt: config.rateLimits.exemptCIDRs, metrics: metrics,
                policyNames: config.rateLimits.policies.map(\.name)
            )
        }
        return GatewayRuntime(
            routes: RouteTable(routes), clusters: clusters, traffic: traffic, configHash: configHash,
            clientIP: ClientIPResolver(config.clientIP), cors: cors, authenticator: authenticator, status: status,
            rateLimiter: rateLimiter
        )
    }

    static func listenerPlans(_ config: GatewayConfig) throws -> [ListenerPlan] {
        var plans: [ListenerPlan] = []
        for listener in config.listeners {
            var http2 = HTTP2Settings()
            http2.maxConcurrentStreams = listener.http2.maxConcurrentStreams
            http2.initialWindowSize = listener.http2.initialWindowSize
            http2.maxHeaderListSize = listener.http2.maxHeaderListSize ?? config.limits.maxHeaderBytes
            http2.resetBurst = UInt64(listener.http2.resetBurst)
            http2.resetRatePerSecond = UInt64(listener.http2.resetRate)
            http2.enableConnectProtocol = config.routes.contains { $0.realtime.websocket }
            var tls: TLSServerContext? = nil
            if let tlsConfig = listener.tls {
                let settings = TLSServerSettings(
                    minimumVersion: tlsConfig.minVersion == .v1_3 ? .v1_3 : .v1_2,
                    certificates: tlsConfig.certificates.map {
                        TLSCertificatePair(certificatePath: $0.cert, keyPath: $0.key)
                    },
                    alpnProtocols: listener.protocols.filter { $0 != .h2c }.map(\.rawValue)
                )
                do {
                    tls = try TLSServerContext(settings: settings)
                } catch {
                    throw GatewayStartupError("listeners.\(listener.name).tls: \(error)")
                }
            }
            let role: ListenerRole = listener.redirectToHTTPS ? .redirect : .proxy
            plans.append(ListenerPlan(
                info: ListenerInfo(name: listener.name, role: role, isTLS: tls != nil),
                host: listener.address.host, port: listener.address.port, tls: tls,
                handshakeTimeout: .init(listener.tls?.handshakeTimeout ?? .seconds(10)),
                acceptsH2C: tls == nil && listener.protocols.contains(.h2c),
                http2: http2
            ))
        }
        plans.append(ListenerPlan(
            info: ListenerInfo(name: "admin", role: .admin, isTLS: false),
            host: config.admin.address.host, port: config.admin.address.port, tls: nil, handshakeTimeout: .seconds(10)
        ))
        return plans
    }

    /// Refuses configs this build cannot serve safely (thrown as `ConfigErrors`).
    public static func validateForStartup(_ config: GatewayConfig) throws {
        let unsupported = unsupportedFeatures(config) + strictValidation(config).errors
        if !unsupported.isEmpty { throw ConfigErrors(errors: unsupported) }
    }

    /// Validates what start-up needs beyond the config text and builds the server (not yet bound).
    public static func makeServer(config: GatewayConfig, configText: String, configPath: String? = nil) throws -> GatewayServer {
        try validateForStartup(config)
        let plans = try listenerPlans(config)
        let observability = Observability(accessLog: config.log.access, tracing: config.tracing)
        let group = MultiThreadedEventLoopGroup(
            numberOfThreads: max(1, config.workers), metricsDelegate: observability.metrics.eventLoopTicks
        )
        let runtime = try runtime(
            config, configHash: stableHash(configText), group: group, metrics: observability.metrics
        )
        return GatewayServer(
            config: config, runtime: runtime, plans: plans, group: group,
            observability: observability, configPath: configPath
        )
    }

    /// FNV-1a of the config text, hex: identifies a config in `/health/detailed` without exposing it.
    static func stableHash(_ text: String) -> String {
        var hash: UInt64 = 14_695_981_039_346_656_037
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 1_099_511_628_211 }
        return String(hash, radix: 16).leftPadded(to: 16)
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
