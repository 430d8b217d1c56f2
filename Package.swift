// swift-tools-version:6.0
import PackageDescription
import Foundation

// `gateway --version` reports the commit it was built from when the build sets this (Dockerfile,
// release scripts); a plain `swift build` says "unknown" rather than guess from a working tree.
let gitCommit = ProcessInfo.processInfo.environment["GATEWAY_GIT_COMMIT"].flatMap { commit in
    commit.allSatisfy { $0.isHexDigit } && !commit.isEmpty ? commit : nil
} ?? "unknown"

let package = Package(
    name: "barberpro-gateway",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "gateway", targets: ["GatewayCLI"]),
        .executable(name: "demo-upstream", targets: ["DemoUpstream"]),
        .library(name: "Gateway", targets: ["Gateway"]),
        .library(name: "JWTVerifier", targets: ["JWTVerifier"]),
        .library(name: "RateLimiter", targets: ["RateLimiter"]),
        .library(name: "RedisClient", targets: ["RedisClient"]),
        .library(name: "RateLimiterRedis", targets: ["RateLimiterRedis"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        // System OpenSSL 3 (libssl-dev) plus static-inline shims for the macros Swift cannot call.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // System nghttp2 (libnghttp2-dev): the HTTP/2 framing layer, driven through mem_recv/mem_send.
        .systemLibrary(
            name: "CNGHTTP2",
            pkgConfig: "libnghttp2",
            providers: [.apt(["libnghttp2-dev"])]
        ),
        .target(
            name: "Gateway",
            dependencies: [
                "COpenSSL",
                "CNGHTTP2",
                "JWTVerifier",
                "TLSClient",
                "RateLimiter",
                "RateLimiterRedis",
                "RedisClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Client-side TLS over memory BIOs (system OpenSSL) as a NIO handler: used by the load
        // generator and by the gateway's JWKS fetcher; no gateway imports.
        .target(
            name: "TLSClient",
            dependencies: [
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // JWS/JWT verification through OpenSSL EVP; independent of the gateway (no import of Gateway).
        .target(name: "JWTVerifier", dependencies: ["COpenSSL"]),
        // Sliding-window / sliding-log maths, the in-process store and the Redis script; no I/O here.
        .target(name: "RateLimiter"),
        // `gateway bench`: the load generator (client-side OpenSSL and nghttp2, its own HTTP/1.1 reader) and
        // its report; independent of the gateway itself, like JWTVerifier.
        .target(
            name: "GatewayBench",
            dependencies: [
                "CNGHTTP2",
                "JWTVerifier",
                "TLSClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // hiredis 0.14 (libhiredis-dev): its RESP reader only. No `pkgConfig:` — hiredis.pc
        // carries -D_FILE_OFFSET_BITS=64, which SwiftPM warns about; the modulemap links it.
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // Pipelined Redis client over SwiftNIO with a small reconnecting pool; no gateway imports.
        .target(
            name: "RedisClient",
            dependencies: [
                "CHiredis",
                "TLSClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The Redis-backed rate-limit store: RateLimiter's script over RedisClient (keeps
        // RateLimiter itself free of NIO).
        .target(
            name: "RateLimiterRedis",
            dependencies: [
                "RateLimiter",
                "RedisClient",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "GatewayCLI",
            dependencies: [
                "Gateway",
                "GatewayBench",
                "CBuildInfo",
                "CSocketIO",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            // Socket reads and writes go to recv/send (Sources/CSocketIO/CSocketIO.c says why).
            linkerSettings: [
                .unsafeFlags(["-Xlinker", "--wrap=read", "-Xlinker", "--wrap=write", "-Xlinker", "--wrap=close"],
                             .when(platforms: [.linux]))
            ]
        ),
        // read/write/close for the gateway's link: recv/send on sockets.
        .target(name: "CSocketIO"),
        // The commit `gateway --version` prints, as a C string constant (Swift has no string defines).
        .target(
            name: "CBuildInfo",
            cSettings: [.define("GATEWAY_GIT_COMMIT", to: "\"\(gitCommit)\"")]
        ),
        // EVALSHA throughput through RedisClient (scripts/bench-redis.sh compares with redis-benchmark).
        .executableTarget(
            name: "RedisBench",
            dependencies: [
                "RedisClient",
                "RateLimiter",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "DemoUpstream",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "Gateway",
                "CNGHTTP2",
                "CSocketIO",
                "JWTVerifier",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "JWTVerifierTests", dependencies: ["JWTVerifier"]),
        .testTarget(name: "RateLimiterTests", dependencies: ["RateLimiter"]),
        .testTarget(
            name: "GatewayBenchTests",
            dependencies: [
                "GatewayBench",
                "JWTVerifier",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .testTarget(
            name: "RedisClientTests",
            dependencies: [
                "RedisClient",
                "RateLimiter",
                "RateLimiterRedis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
