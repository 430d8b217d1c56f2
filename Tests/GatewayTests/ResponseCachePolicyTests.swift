import Foundation
import NIOHTTP1
import Testing
@testable import Gateway

@Suite("Response cache: cacheability and keys")
struct ResponseCachePolicyTests {
    func key(_ method: HTTPMethod = .GET, _ uri: String, headers: HeadFields = [:], hasBody: Bool = false,
             keyBy: RouteCacheConfig.KeyBy = .shared, subject: String? = nil) -> String? {
        CachePolicy.baseKey(method: method, host: "API.Example.com:8443", uri: uri, headers: headers, hasBody: hasBody,
                            keyBy: keyBy, subject: subject)
    }

    @Test func onlyBodylessGetAndHeadRequestsHaveAKey() {
        #expect(key(.GET, "/a") == "GET api.example.com /a?")
        #expect(key(.HEAD, "/a") == "HEAD api.example.com /a?")
        #expect(key(.POST, "/a") == nil)
        #expect(key(.PUT, "/a") == nil)
        #expect(key(.GET, "/a", hasBody: true) == nil)
        #expect(key(.GET, "/a", headers: ["Cache-Control": "no-store"]) == nil)
    }

    @Test func queryParametersAreSortedAndEmptyOnesDropped() {
        #expect(key(.GET, "/a?b=2&a=1") == key(.GET, "/a?a=1&&b=2"))
        #expect(key(.GET, "/a?b=2&a=1") == "GET api.example.com /a?a=1&b=2")
        #expect(key(.GET, "/a?a=1") != key(.GET, "/a?a=2"))
        #expect(key(.GET, "/a?x=1#frag") == key(.GET, "/a?x=1"))
        #expect(CachePolicy.path(ofKey: key(.GET, "/api/barbers?x=1")!) == "/api/barbers")
    }

    @Test func authorizationIsNeverSharedButKeyedBySubjectWhenTheRouteSaysSo() {
        let bearer: HeadFields = ["Authorization": "Bearer t"]
        #expect(key(.GET, "/me", headers: bearer) == nil)
        let alice = key(.GET, "/me", headers: bearer, keyBy: .claimSub, subject: "alice")
        let bob = key(.GET, "/me", headers: bearer, keyBy: .claimSub, subject: "bob")
        #expect(alice != nil && bob != nil && alice != bob)
        #expect(key(.GET, "/me", keyBy: .claimSub, subject: nil) == nil)
    }

    @Test func varyPartReadsTheNamedRequestFields() {
        let en = CachePolicy.varyPart(["accept-language"], request: ["Accept-Language": "en"])
        let fr = CachePolicy.varyPart(["accept-language"], request: ["Accept-Language": "fr"])
        #expect(en != fr)
        #expect(CachePolicy.varyPart([], request: ["Accept-Language": "en"]) == "")
    }

    func fresh(_ fields: [(String, String)], status: UInt = 200) -> CachePolicy.Freshness? {
        CachePolicy.freshness(status: status, headers: HTTPHeaders(fields))
    }

    @Test func lifetimeComesFromSMaxAgeThenMaxAgeThenExpires() {
        #expect(fresh([("Cache-Control", "public, max-age=60")])?.lifetime == 60)
        #expect(fresh([("Cache-Control", "max-age=60, s-maxage=5")])?.lifetime == 5)
        #expect(fresh([("cache-control", "Max-Age=\"30\"")])?.lifetime == 30)
        let date = "Mon, 30 Nov 2026 12:00:00 GMT"
        #expect(fresh([("Date", date), ("Expires", "Mon, 30 Nov 2026 12:02:00 GMT")])?.lifetime == 120)
        #expect(fresh([("Expires", "0")]) == nil)
        // `public` alone gives no lifetime: nothing to serve it for.
        #expect(fresh([("Cache-Control", "public")]) == nil)
        #expect(fresh([]) == nil)
    }

    @Test func privateNoStoreNoCacheSetCookieAndVaryStarAreNeverStored() {
        #expect(fresh([("Cache-Control", "private, max-age=60")]) == nil)
        #expect(fresh([("Cache-Control", "no-store, max-age=60")]) == nil)
        #expect(fresh([("Cache-Control", "no-cache, max-age=60")]) == nil)
        #expect(fresh([("Cache-Control", "max-age=60"), ("Set-Cookie", "a=b")]) == nil)
        #expect(fresh([("Cache-Control", "max-age=60"), ("Vary", "*")]) == nil)
        #expect(fresh([("Cache-Control", "max-age=60")], status: 500) == nil)
        #expect(fresh([("Cache-Control", "max-age=60")], status: 206) == nil)
        #expect(fresh([("Cache-Control", "max-age=60")], status: 404)?.lifetime == 60)
    }

    @Test func ageAlreadySpentAndVaryNamesAndStaleExtensions() {
        let f = fresh([("Cache-Control", "max-age=60, stale-while-revalidate=30, stale-if-error=600"),
                       ("Age", "10"), ("Vary", "Accept-Language, accept-encoding"), ("Vary", "Accept-Language")])
        #expect(f == CachePolicy.Freshness(lifetime: 60, initialAge: 10, staleWhileRevalidate: 30, staleIfError: 600,
                                           vary: ["accept-encoding", "accept-language"]))
        #expect(fresh([("Cache-Control", "max-age=60"), ("Age", "60")]) == nil)
    }

    @Test func configRejectsBadValues() throws {
        let fixture = try ConfigFixture()
        let base = minimalYAML + """
        upstreams: { u: { endpoints: [127.0.0.1:1] } }
        routes:
          - name: r
            upstream: u

        """
        let config = try fixture.parse(base + "    cache: { max_object_bytes: 2KiB }\n")
        #expect(config.routes[0].cache?.maxObjectBytes == 2048)
        #expect(config.routes[0].cache?.keyBy == .shared)
        #expect(fixture.errors(base + "    cache: { key_by: claim:sub }\n")
            .contains("routes[0].cache.key_by: claim:sub needs auth: optional or required on the route"))
        #expect(try fixture.parse(base).routes[0].cache == nil)
        let errors = fixture.errors(base + "    cache: { max_objekt_bytes: 1KiB, key_by: sub, memory_bytes: 1KiB, max_object_bytes: 2KiB }\n")
        #expect(errors.contains("routes[0].cache.max_objekt_bytes: unknown key (did you mean 'max_object_bytes'?)"))
        #expect(errors.contains { $0.hasPrefix("routes[0].cache.key_by: expected one of shared, claim:sub, got 'sub'") })
        #expect(errors.contains("routes[0].cache.max_object_bytes: must not exceed memory_bytes (1024 bytes)"))
        #expect(fixture.errors(base + "    cache: { store: redis }\n").contains("routes[0].cache.store: redis needs the redis section (redis.url, or redis.nodes / redis.sentinels)"))
        #expect(fixture.errors(base + "    cache: { store: disk }\n").contains { $0.hasPrefix("routes[0].cache.store: expected one of memory, redis") })
        let redis = try fixture.parse(base + "    cache: { store: redis }\nredis: { url: redis://127.0.0.1:6379 }\n")
        #expect(redis.routes[0].cache?.store == .redis)
    }
}
