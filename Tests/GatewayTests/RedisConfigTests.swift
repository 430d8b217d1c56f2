import Foundation
import Testing
@testable import Gateway

/// `redis:` beyond one plain URL: modes, TLS files, password_file — every bad value refused with
/// its path, secrets never quoted.
@Suite struct RedisConfigTests {
    @Test func clusterSentinelAndTLSAreDecoded() throws {
        let fixture = try ConfigFixture()
        try Data("pa55-from-file\r\nignored\n".utf8).write(to: URL(fileURLWithPath: fixture.directory + "/keys/redis-pass"))
        let config = try fixture.parse(minimalYAML + """
        redis:
          mode: cluster
          url: 'rediss://gw@10.0.0.1:6379'
          password_file: keys/redis-pass
          nodes: ['10.0.0.1:6379', '[::1]:7000']
          connect_timeout: 400ms
          tls: { ca: certs/dev.crt, cert: certs/dev.crt, key: certs/dev.key, server_name: redis.internal }
        """)
        let redis = config.redis
        #expect(redis.mode == .cluster && redis.isEnabled)
        #expect(redis.nodes == [HostPort(host: "10.0.0.1", port: 6379), HostPort(host: "::1", port: 7000)])
        #expect(redis.endpoint?.username == "gw" && redis.endpoint?.password?.value == "pa55-from-file")
        #expect(redis.endpoint?.tls == true && redis.connectTimeout == .milliseconds(400))
        #expect(redis.tls == RedisTLSConfig(ca: fixture.directory + "/certs/dev.crt", cert: fixture.directory + "/certs/dev.crt",
                                            key: fixture.directory + "/certs/dev.key", serverName: "redis.internal", verify: true))
        #expect("\(redis.endpoint!)" == "rediss://gw:<redacted>@10.0.0.1:6379/0")

        let sentinel = try fixture.parse(minimalYAML + """
        redis: { mode: sentinel, sentinels: ['127.0.0.1:26379'], master_name: mymaster }
        """).redis
        #expect(sentinel.isEnabled && sentinel.endpoint == nil && sentinel.masterName == "mymaster" && sentinel.tls == nil)
        // rediss:// alone turns TLS on with verification.
        let plainTLS = try fixture.parse(minimalYAML + "redis: { url: 'rediss://:pw@cache:6380' }\n").redis
        #expect(plainTLS.tls == RedisTLSConfig(ca: nil, cert: nil, key: nil, serverName: nil, verify: true))
    }

    @Test func badValuesAreRefusedWithTheirPath() throws {
        let fixture = try ConfigFixture()
        try Data("\n".utf8).write(to: URL(fileURLWithPath: fixture.directory + "/keys/empty"))
        let cases: [(String, String)] = [
            ("{ mode: clustr, nodes: ['a:1'] }", "redis.mode: expected one of standalone, cluster, sentinel, got 'clustr' (did you mean 'cluster'?)"),
            ("{ mode: cluster }", "redis.nodes: required with mode: cluster (seed nodes, host:port)"),
            ("{ mode: cluster, nodes: [] }", "redis.nodes: must not be empty"),
            ("{ mode: cluster, nodes: ['a:1'], url: 'redis://a:1/2' }", "redis.url: Redis Cluster has database 0 only"),
            ("{ mode: cluster, nodes: ['nohost'] }", "redis.nodes[0]: expected an address like 0.0.0.0:8443, [::1]:9901 or host:port (port 1...65535), got 'nohost'"),
            ("{ mode: sentinel, sentinels: ['a:1'] }", "redis.master_name: required with mode: sentinel"),
            ("{ mode: sentinel, master_name: m }", "redis.sentinels: required with mode: sentinel (host:port of each sentinel)"),
            ("{ url: 'redis://a:1', nodes: ['a:1'] }", "redis.nodes: only with mode: cluster"),
            ("{ url: 'rediss://a:1', tls: { cert: certs/dev.crt } }", "redis.tls.key: cert and key go together (a client certificate and its key)"),
            ("{ url: 'rediss://a:1', tls: { ca: certs/missing.pem } }", "redis.tls.ca: file not found: certs/missing.pem"),
            ("{ url: 'rediss://a:1', tls: { verfy: false } }", "redis.tls.verfy: unknown key (did you mean 'verify'?)"),
            ("{ url: 'redis://a:1', password_file: keys/empty }", "redis.password_file: the file's first line (the password) is empty"),
            ("{ password_file: keys/rs1.pem }", "redis.password_file: needs redis.url (the server)"),
            ("{ url: 'redis://a:1', connect_timeout: 0s }", "redis.connect_timeout: must be at least 1ms, got '0s'"),
        ]
        for (section, line) in cases {
            fixture.expectError(minimalYAML + "redis: \(section)\n", line)
        }
        // A misspelt mode is the only complaint (not also "nodes: only with mode: cluster").
        #expect(fixture.errors(minimalYAML + "redis: { mode: clustr, nodes: ['a:1'] }\n").count == 1)
    }
}
