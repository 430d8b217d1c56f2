// swift-tools-version:6.1
// Microbenchmarks of the gateway's hot paths with ordo-one/benchmark (package-benchmark).
// A separate package so the gateway's own build and `make test` stay lean: run with
// `benchmarks/micro.sh` (or `swift package --package-path benchmarks/Microbenchmarks benchmark`).
import PackageDescription

// SwiftPM names a path dependency after its directory (the checkout may be `wt-micro`, `main`, …),
// not after its manifest's `name:`, so the product references use that directory name.
let gatewayPackage = Context.packageDirectory.split(separator: "/").dropLast(2).last.map { $0.lowercased() } ?? "barberpro-gateway"

let package = Package(
    name: "GatewayMicrobenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(path: "../.."),
    ],
    targets: [
        .executableTarget(
            name: "GatewayMicro",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Gateway", package: gatewayPackage),
                .product(name: "JWTVerifier", package: gatewayPackage),
                .product(name: "RateLimiter", package: gatewayPackage),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            path: "Benchmarks/GatewayMicro",
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "benchmark"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
