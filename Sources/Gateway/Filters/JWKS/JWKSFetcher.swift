import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import TLSClient

/// Where `jwt.jwks_url` points, split once at config load.
struct JWKSEndpoint: OneShotTarget, Equatable {
    var host: String
    var port: Int
    /// Origin-form request target (path and query).
    var target: String
    /// Always: a key set comes over TLS only.
    var secure: Bool { true }

    init?(url: String) {
        guard let parsed = URL(string: url), parsed.scheme?.lowercased() == "https",
              let host = parsed.host, !host.isEmpty else { return nil }
        self.host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        self.port = parsed.port ?? 443
        var target = parsed.path.isEmpty ? "/" : parsed.path
        if let query = parsed.query { target += "?" + query }
        self.target = target
    }
}

/// A fetched JWKS document.
struct JWKSResponse: Sendable {
    var body: [UInt8]
    /// Every `Cache-Control` field value, in order.
    var cacheControl: [String]
}

struct JWKSFetchError: Error, CustomStringConvertible, Sendable {
    var description: String
    init(_ description: String) { self.description = description }
}

/// One HTTPS `GET` of the JWKS document (`OneShotHTTP`): 200 only, a size cap, one deadline
/// covering connect, handshake and response. No redirects: a JWKS URL is configured, not discovered.
enum JWKSFetcher {
    /// Larger than any real key set (a few KiB), small enough that a broken server cannot make
    /// the gateway buffer much.
    static let maxBodyBytes = 1 << 20

    static func fetch(
        _ endpoint: JWKSEndpoint, tls: TLSClientContext, timeout: TimeAmount, on eventLoop: EventLoop
    ) -> EventLoopFuture<JWKSResponse> {
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: endpoint.target)
        head.headers.add(name: "accept", value: "application/jwk-set+json, application/json")
        head.headers.add(name: "user-agent", value: "barberpro-gateway-jwks")
        return OneShotHTTP.exchange(
            endpoint, tls: tls, head: head, accept: { $0 == .ok }, maxBodyBytes: Self.maxBodyBytes, timeout: timeout,
            on: eventLoop
        ).map { response in
            JWKSResponse(body: response.body, cacheControl: response.headers["cache-control"])
        }.flatMapErrorThrowing { error in
            throw JWKSFetchError("\(error)")
        }
    }
}
