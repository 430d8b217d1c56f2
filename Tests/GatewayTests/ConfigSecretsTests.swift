import Foundation
import Testing
@testable import Gateway

@Suite("Config: environment substitution and secrets")
struct ConfigSecretsTests {
    let fixture: ConfigFixture
    init() throws { fixture = try ConfigFixture() }

    @Test func substitutionRules() {
        let env = ["SET": "value", "EMPTY": ""]
        func apply(_ text: String) -> Result<String, EnvironmentSubstitution.Failure> {
            EnvironmentSubstitution.apply(text, environment: env)
        }
        #expect(apply("${SET}") == .success("value"))
        #expect(apply("a-${SET}-b") == .success("a-value-b"))
        #expect(apply("${EMPTY}") == .success(""))
        #expect(apply("${UNSET:-fallback}") == .success("fallback"))
        #expect(apply("${EMPTY:-fallback}") == .success("fallback"))
        #expect(apply("${SET:-fallback}") == .success("value"))
        #expect(apply("${UNSET:-}") == .success(""))
        #expect(apply("${UNSET}") == .failure(.unset("UNSET")))
        #expect(apply("$$") == .success("$"))
        #expect(apply("$${SET}") == .success("${SET}"))
        #expect(apply("cost: 5$ and $x") == .success("cost: 5$ and $x"))
        #expect(apply("${SET") == .failure(.malformed))
        #expect(apply("${1BAD}") == .failure(.malformed))
        #expect(apply("${}") == .failure(.malformed))
        #expect(apply("${SET}${SET}") == .success("valuevalue"))
    }

    @Test func substitutionInsideTheConfig() throws {
        let yaml = """
        workers: ${WORKERS}
        listeners:
          - name: ${NAME:-main}
            address: ${HOST:-127.0.0.1}:${PORT:-0}
        redis: { url: "${EMPTY}" }
        jwt: { issuer: "$${literal}", audiences: [aud], keys: [{ kid: k, algorithm: HS256, secret: "pa$$word" }] }
        """
        let config = try fixture.parse(yaml, environment: ["WORKERS": "3", "PORT": "8081", "EMPTY": ""])
        #expect(config.workers == 3)
        #expect(config.listeners[0].name == "main")
        #expect(config.listeners[0].address == HostPort(host: "127.0.0.1", port: 8081))
        #expect(config.redis.endpoint == nil)  // set-but-empty is set: no error, and empty url = no Redis
        #expect(config.jwt?.issuer == "${literal}")
        #expect(config.jwt?.keys[0].material == .secret(ConfigSecret("pa$word")))
    }

    @Test func unsetVariablesAreNamedWithTheirKeyPath() {
        let errors = fixture.errors("""
        workers: ${WORKERS}
        listeners:
          - name: main
            address: ${LISTEN_ADDRESS}
        redis: { url: "${REDIS_URL}" }
        cors: { allowed_origins: ["${ORIGIN"] }
        """)
        #expect(errors == [
            "workers: environment variable WORKERS is not set",
            "listeners[0].address: environment variable LISTEN_ADDRESS is not set",
            "redis.url: environment variable REDIS_URL is not set",
            "cors.allowed_origins[0]: malformed ${...} substitution (expected ${VAR} or ${VAR:-default}; write $$ for a literal $)",
        ])
    }

    @Test func secretsNeverAppearInErrors() {
        let secret = "s3cr3t-Pa55w0rd"
        let errors = fixture.errors(minimalYAML + """
        redis: { url: "${REDIS_URL}", timeout: "${BAD_TIMEOUT}" }
        jwt:
          issuer: i
          audiences: [a]
          keys:
            - { kid: a, algorithm: RS256, secret: "${JWT_SECRET}" }
            - { kid: b, algorithm: HS256, secret: "${JWT_SECRET}", public_key: keys/rs1.pem }
            - { kid: c, algorithm: HS256, secret: ["\(secret)"] }
        """, environment: ["REDIS_URL": "http://admin:\(secret)@cache:6379", "JWT_SECRET": secret,
                           "BAD_TIMEOUT": "1ms"])
        #expect(errors.count == 5, "\(errors)")
        #expect(errors.contains("redis.url: scheme must be redis:// or rediss:// (expected redis[s]://[user:password@]host:port[/db])"))
        for line in errors {
            #expect(!line.contains(secret), "secret leaked: \(line)")
        }
        for url in ["redis://admin:\(secret)@cache", "redis://admin:\(secret)@cache:6379/db\(secret)",
                    "redis://\(secret)@cache:6379", "redis:/\(secret)"] {
            for line in fixture.errors(minimalYAML + "redis: { url: \"\(url)\" }\n") {
                #expect(!line.contains(secret), "secret leaked: \(line)")
            }
        }
    }

    @Test func secretsAreRedactedWhenPrinted() throws {
        let config = try fixture.parse(minimalYAML + """
        redis: { url: "redis://gw:topsecret@cache:6379/1" }
        jwt: { issuer: i, audiences: [a], keys: [{ kid: k, algorithm: HS256, secret: topsecret }] }
        """)
        let printed = "\(config) \(String(reflecting: config)) \(config.redis.endpoint!)"
        var dumped = ""
        dump(config, to: &dumped)
        #expect(!printed.contains("topsecret"))
        #expect(!dumped.contains("topsecret"))
        #expect(printed.contains("<redacted>"))
        #expect(config.redis.endpoint?.password?.value == "topsecret")
    }
}
