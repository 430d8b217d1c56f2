import Foundation
import JWTVerifier
import NIOCore
import TLSClient

/// OpenID Connect Discovery 1.0 (`jwt.providers[].discovery_url`): the provider metadata names
/// the JWKS (`jwks_uri`). Both documents are fetched on every refresh, so a provider that moves
/// its JWKS is followed like one that rotates its keys.
enum OIDCDiscovery {
    /// Fetches the metadata, checks it, then fetches the JWKS it points to. The JWKS response's
    /// `Cache-Control` drives the next refresh.
    static func fetchKeys(
        _ endpoint: JWKSEndpoint, issuer: String, tls: TLSClientContext, timeout: TimeAmount, on eventLoop: EventLoop
    ) -> EventLoopFuture<JWKSResponse> {
        JWKSFetcher.fetch(endpoint, tls: tls, timeout: timeout, on: eventLoop).flatMapThrowing { metadata in
            try Self.jwksEndpoint(metadata.body, issuer: issuer)
        }.flatMap { jwks in
            JWKSFetcher.fetch(jwks, tls: tls, timeout: timeout, on: eventLoop)
        }
    }

    /// The `jwks_uri` of a metadata document whose `issuer` is exactly the configured one (§4.3:
    /// otherwise the document may describe another provider's keys).
    static func jwksEndpoint(_ body: [UInt8], issuer: String) throws -> JWKSEndpoint {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
            throw JWKSFetchError("discovery document is not a JSON object")
        }
        guard let documentIssuer = object["issuer"] as? String, documentIssuer == issuer else {
            throw JWKSFetchError("discovery document's issuer differs from the configured issuer")
        }
        guard let uri = object["jwks_uri"] as? String, let endpoint = JWKSEndpoint(url: uri) else {
            throw JWKSFetchError("discovery document lacks an https:// jwks_uri")
        }
        return endpoint
    }
}

extension JWKSRefresher {
    /// Keys found through OIDC discovery at `discoveryURL` (which identifies the source across
    /// reloads).
    convenience init(
        discoveryURL: String, endpoint: JWKSEndpoint, issuer: String, tls: TLSClientContext, config: JWKSRefreshConfig,
        staticKeys: [VerificationKey], verifier: JWTVerifier
    ) {
        let timeout = TimeAmount(config.timeout)
        self.init(
            url: discoveryURL, settings: .init(config), staticKeys: staticKeys, verifier: verifier,
            fetch: { loop in OIDCDiscovery.fetchKeys(endpoint, issuer: issuer, tls: tls, timeout: timeout, on: loop) })
    }
}

/// The refreshers of every provider with remote keys, started, stopped and carried across a
/// reload together.
final class JWKSRefreshers: Sendable {
    let all: [JWKSRefresher]

    init(_ all: [JWKSRefresher]) { self.all = all }

    func start(on eventLoop: EventLoop) {
        for refresher in self.all { refresher.start(on: eventLoop) }
    }

    func stop() {
        for refresher in self.all { refresher.stop() }
    }

    /// Each refresher starts from the previous snapshot's keys for the same URL.
    func adoptKeys(from previous: JWKSRefreshers) {
        for refresher in self.all {
            for old in previous.all where old.url == refresher.url { refresher.adoptKeys(from: old) }
        }
    }
}
