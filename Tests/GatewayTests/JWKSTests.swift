import Foundation
import JWTVerifier
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Synchronization
import Testing

@testable import Gateway

/// `jwt.jwks_url`: Cache-Control, clamping, backoff and the unknown-kid rate limit on the pure
/// state machine with injected times; the refresher driven on an `EmbeddedEventLoop` with an
/// injected fetch (no sockets); the static + JWKS merge; the config keys.
@Suite("JWKS")
struct JWKSTests {
    static let settings = JWKSRefreshStateMachine.Settings(
        min: .seconds(30), max: .seconds(3600), defaultInterval: .seconds(300), unknownKidInterval: .seconds(30))
    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    // MARK: Cache-Control and clamping

    @Test func cacheControlMaxAge() {
        #expect(JWKSCacheControl.maxAge(["max-age=600"]) == .seconds(600))
        #expect(JWKSCacheControl.maxAge(["public, max-age=60, must-revalidate"]) == .seconds(60))
        #expect(JWKSCacheControl.maxAge(["Public", "MAX-AGE = \"120\""]) == .seconds(120))
        #expect(JWKSCacheControl.maxAge(["max-age=10", "max-age=20"]) == .seconds(10))  // first wins
        #expect(JWKSCacheControl.maxAge(["s-maxage=90"]) == nil)
        #expect(JWKSCacheControl.maxAge([]) == nil)
        #expect(JWKSCacheControl.maxAge(["max-age=abc"]) == nil)
        #expect(JWKSCacheControl.maxAge(["max-age=-5"]) == nil)
        #expect(JWKSCacheControl.maxAge(["max-age="]) == nil)
        #expect(JWKSCacheControl.maxAge(["no-cache"]) == .zero)
        #expect(JWKSCacheControl.maxAge(["no-store, max-age=300"]) == .seconds(300))
        #expect(JWKSCacheControl.maxAge(["max-age=99999999999999999999"]) == .seconds(999_999_999))
    }

    @Test func refreshDelayIsClamped() {
        let s = Self.settings
        #expect(s.refreshDelay(maxAge: nil) == .seconds(300))
        #expect(s.refreshDelay(maxAge: .zero) == .seconds(30))
        #expect(s.refreshDelay(maxAge: .seconds(10)) == .seconds(30))
        #expect(s.refreshDelay(maxAge: .seconds(120)) == .seconds(120))
        #expect(s.refreshDelay(maxAge: .seconds(999_999_999)) == .seconds(3600))
        let config = JWKSRefreshStateMachine.Settings(JWKSRefreshConfig())
        #expect(config == s)
    }

    @Test func retryBacksOffUpToTheFloor() {
        let delays = (1...8).map { Self.settings.retryDelay(failures: $0) }
        #expect(delays == [1, 2, 4, 8, 16, 30, 30, 30].map { TimeAmount.seconds($0) })
        #expect(Self.settings.retryDelay(failures: 500) == .seconds(30))
    }

    // MARK: State machine

    @Test func scheduleFollowsMaxAgeAndFailures() {
        var machine = JWKSRefreshStateMachine(settings: Self.settings)
        #expect(machine.unknownKey(now: Self.t0) == .none)  // not started
        #expect(machine.start() == .fetch)
        #expect(machine.start() == .none)
        #expect(machine.timerFired(now: Self.t0) == .none)  // fetching
        #expect(machine.fetchSucceeded(now: Self.t0, maxAge: .seconds(60)) == Self.t0 + .seconds(60))
        #expect(machine.timerFired(now: Self.t0 + .seconds(59)) == .none)
        #expect(machine.timerFired(now: Self.t0 + .seconds(60)) == .fetch)
        let t1 = Self.t0 + .seconds(60)
        #expect(machine.fetchFailed(now: t1) == t1 + .seconds(1))
        #expect(machine.timerFired(now: t1 + .seconds(1)) == .fetch)
        #expect(machine.fetchFailed(now: t1 + .seconds(1)) == t1 + .seconds(3))
        #expect(machine.consecutiveFailures == 2)
        #expect(machine.timerFired(now: t1 + .seconds(3)) == .fetch)
        #expect(machine.fetchSucceeded(now: t1 + .seconds(3), maxAge: nil) == t1 + .seconds(303))
        #expect(machine.consecutiveFailures == 0)
        machine.stop()
        #expect(machine.timerFired(now: t1 + .seconds(400)) == .none)
        #expect(machine.unknownKey(now: t1 + .seconds(400)) == .none)
    }

    @Test func unknownKidRefetchesAreRateLimited() {
        var machine = JWKSRefreshStateMachine(settings: Self.settings)
        _ = machine.start()
        _ = machine.fetchSucceeded(now: Self.t0, maxAge: nil)
        // The first unknown kid fetches at once, even right after a scheduled fetch.
        #expect(machine.unknownKey(now: Self.t0 + .seconds(1)) == .fetch)
        #expect(machine.unknownKey(now: Self.t0 + .seconds(1)) == .none)  // one fetch in flight
        _ = machine.fetchSucceeded(now: Self.t0 + .seconds(2), maxAge: nil)
        // Random kids for the rest of the interval: nothing.
        for second in stride(from: 2, to: 31, by: 1) {
            #expect(machine.unknownKey(now: Self.t0 + .seconds(Int64(second))) == .none)
        }
        #expect(machine.unknownKey(now: Self.t0 + .seconds(31)) == .fetch)
        // A failure does not reset the limit.
        _ = machine.fetchFailed(now: Self.t0 + .seconds(32))
        #expect(machine.unknownKey(now: Self.t0 + .seconds(40)) == .none)
        #expect(machine.unknownKey(now: Self.t0 + .seconds(61)) == .fetch)
    }

    // MARK: Merge

    static func hmacKey(_ kid: String, _ byte: UInt8) -> VerificationKey {
        try! VerificationKey.hmac(kid: kid, algorithm: .hs256, secret: [UInt8](repeating: byte, count: 32))
    }

    static func jwks(_ keys: [(kid: String, byte: UInt8)]) -> [UInt8] {
        let entries = keys.map { key -> String in
            let k = Data([UInt8](repeating: key.byte, count: 32)).base64EncodedString()
                .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
            return #"{"kty":"oct","alg":"HS256","use":"sig","kid":"\#(key.kid)","k":"\#(k)"}"#
        }
        return Array(#"{"keys":[\#(entries.joined(separator: ","))]}"#.utf8)
    }

    static func token(kid: String, byte: UInt8) -> String {
        let now = Int(Date().timeIntervalSince1970)
        return try! JWTSigner(algorithm: .hs256, secret: [UInt8](repeating: byte, count: 32), kid: kid)
            .sign([("sub", .string("u-1")), ("iat", .integer(now)), ("exp", .integer(now + 600))])
    }

    @Test func staticKeysComeFirstAndStay() throws {
        let fetched = try KeySet.jwks(json: Self.jwks([("s1", 9), ("j1", 2)]))
        let merged = KeySet.merged(static: [Self.hmacKey("s1", 1)], fetched: fetched)
        #expect(merged.keys.map(\.kid) == ["s1", "s1", "j1"])
        let verifier = JWTVerifier(keys: merged)
        // A JWKS key reusing a static kid does not displace it.
        #expect(throws: Never.self) { try verifier.verify(Self.token(kid: "s1", byte: 1)) }
        #expect(throws: JWTError.badSignature) { try verifier.verify(Self.token(kid: "s1", byte: 9)) }
        #expect(throws: Never.self) { try verifier.verify(Self.token(kid: "j1", byte: 2)) }
        #expect(KeySet.merged(static: [Self.hmacKey("s1", 1)], fetched: nil).keys.map(\.kid) == ["s1"])
    }

    // MARK: The refresher, on an embedded loop

    /// A JWKS "server" for the injected fetch: the next answer, and how many fetches it saw.
    final class FakeSource: Sendable {
        enum Answer: Sendable {
            case document([UInt8], cacheControl: [String])
            case failure
        }
        let answer: Mutex<Answer>
        let fetches = Atomic<Int>(0)
        init(_ answer: Answer) { self.answer = Mutex(answer) }

        func fetch(_ loop: EventLoop) -> EventLoopFuture<JWKSResponse> {
            fetches.wrappingAdd(1, ordering: .relaxed)
            switch answer.withLock({ $0 }) {
            case .document(let body, let cacheControl):
                return loop.makeSucceededFuture(JWKSResponse(body: body, cacheControl: cacheControl))
            case .failure:
                return loop.makeFailedFuture(JWKSFetchError("connection refused"))
            }
        }
    }

    func makeRefresher(_ source: FakeSource, loop: EmbeddedEventLoop) -> (JWKSRefresher, Authenticator) {
        let statics = [Self.hmacKey("s1", 1)]
        let verifier = JWTVerifier(keys: KeySet(keys: statics))
        let refresher = JWKSRefresher(
            url: "https://idp.test/jwks", settings: Self.settings, staticKeys: statics, verifier: verifier,
            now: { loop.now }, fetch: { source.fetch($0) })
        return (refresher, Authenticator(verifier: verifier, forwardClaims: [], jwks: refresher))
    }

    func passes(_ authenticator: Authenticator, kid: String, byte: UInt8) -> Bool {
        var headers = HTTPHeaders()
        headers.add(name: "authorization", value: "Bearer " + Self.token(kid: kid, byte: byte))
        if case .authenticated = authenticator.authenticate(HeadFields(headers), mode: .required, requiredClaims: [:]) { return true }
        return false
    }

    @Test func lastGoodSetIsKeptOnFailure() {
        let loop = EmbeddedEventLoop()
        let source = FakeSource(.document(Self.jwks([("j1", 2)]), cacheControl: ["max-age=60"]))
        let (refresher, auth) = makeRefresher(source, loop: loop)
        #expect(passes(auth, kid: "s1", byte: 1))
        #expect(!passes(auth, kid: "j1", byte: 2))  // not started: nothing fetched
        #expect(source.fetches.load(ordering: .relaxed) == 0)
        refresher.start(on: loop)
        #expect(source.fetches.load(ordering: .relaxed) == 1)
        #expect(passes(auth, kid: "j1", byte: 2) && passes(auth, kid: "s1", byte: 1))

        source.answer.withLock { $0 = .failure }
        loop.advanceTime(by: .seconds(60))
        #expect(source.fetches.load(ordering: .relaxed) == 2)
        #expect(passes(auth, kid: "j1", byte: 2))
        source.answer.withLock { $0 = .document(Array("<html>oops</html>".utf8), cacheControl: []) }
        loop.advanceTime(by: .seconds(1))  // first retry after 1 s
        #expect(source.fetches.load(ordering: .relaxed) == 3)
        #expect(passes(auth, kid: "j1", byte: 2) && passes(auth, kid: "s1", byte: 1))
        loop.advanceTime(by: .seconds(1))  // second retry after 2 s: not yet
        #expect(source.fetches.load(ordering: .relaxed) == 3)

        // Rotation: the new kid is refused once, triggers one fetch, then passes.
        source.answer.withLock { $0 = .document(Self.jwks([("j2", 3)]), cacheControl: []) }
        #expect(!passes(auth, kid: "j2", byte: 3))
        #expect(source.fetches.load(ordering: .relaxed) == 4)
        #expect(passes(auth, kid: "j2", byte: 3))
        #expect(!passes(auth, kid: "j1", byte: 2))  // withdrawn
        for index in 0..<50 { #expect(!passes(auth, kid: "random-\(index)", byte: 4)) }
        #expect(source.fetches.load(ordering: .relaxed) == 4)
        loop.advanceTime(by: .seconds(30))
        #expect(!passes(auth, kid: "random-x", byte: 4))
        #expect(source.fetches.load(ordering: .relaxed) == 5)

        refresher.stop()
        loop.advanceTime(by: .seconds(7200))
        #expect(source.fetches.load(ordering: .relaxed) == 5)
        #expect(passes(auth, kid: "j2", byte: 3))
        try? loop.syncShutdownGracefully()
    }

    @Test func reloadAdoptsTheLastGoodSet() {
        let loop = EmbeddedEventLoop()
        let source = FakeSource(.document(Self.jwks([("j1", 2)]), cacheControl: []))
        let (old, _) = makeRefresher(source, loop: loop)
        old.start(on: loop)
        let (new, auth) = makeRefresher(FakeSource(.failure), loop: loop)
        new.adoptKeys(from: old)
        old.stop()
        #expect(passes(auth, kid: "j1", byte: 2) && passes(auth, kid: "s1", byte: 1))
        try? loop.syncShutdownGracefully()
    }

    @Test func reloadAdoptsEachProvidersSetByURL() {
        let loop = EmbeddedEventLoop()
        func refresher(_ url: String, _ source: FakeSource) -> (JWKSRefresher, Authenticator) {
            let verifier = JWTVerifier(keys: KeySet(keys: []))
            let refresher = JWKSRefresher(
                url: url, settings: Self.settings, staticKeys: [], verifier: verifier,
                now: { loop.now }, fetch: { source.fetch($0) })
            return (refresher, Authenticator(verifier: verifier, forwardClaims: [], jwks: refresher))
        }
        let (oldA, _) = refresher("https://a.test/jwks", FakeSource(.document(Self.jwks([("a1", 2)]), cacheControl: [])))
        let (oldB, _) = refresher("https://b.test/openid", FakeSource(.document(Self.jwks([("b1", 3)]), cacheControl: [])))
        let old = JWKSRefreshers([oldA, oldB])
        old.start(on: loop)
        let (newB, authB) = refresher("https://b.test/openid", FakeSource(.failure))
        let (newA, authA) = refresher("https://a.test/jwks", FakeSource(.failure))
        JWKSRefreshers([newB, newA]).adoptKeys(from: old)
        old.stop()
        #expect(passes(authA, kid: "a1", byte: 2) && !passes(authA, kid: "b1", byte: 3))
        #expect(passes(authB, kid: "b1", byte: 3) && !passes(authB, kid: "a1", byte: 2))
        try? loop.syncShutdownGracefully()
    }

    // MARK: Config

    @Test func jwksConfigKeys() throws {
        let fixture = try ConfigFixture()
        try Data("dummy\n".utf8).write(to: URL(fileURLWithPath: fixture.directory + "/ca.pem"))
        let config = try fixture.parse(minimalYAML + """
            jwt:
              issuer: i
              audiences: [a]
              jwks_url: "https://127.0.0.1:8443/jwks.json"
              jwks_refresh: { min: 2s, max: 10m, default: 1m, unknown_kid_interval: 5s, timeout: 3s }
            """)
        let jwt = try #require(config.jwt)
        #expect(jwt.jwksRefresh.min == .seconds(2) && jwt.jwksRefresh.max == .seconds(600))
        #expect(jwt.jwksRefresh.defaultInterval == .seconds(60) && jwt.jwksRefresh.unknownKidInterval == .seconds(5))
        #expect(jwt.jwksRefresh.timeout == .seconds(3))
        #expect(GatewayBuilder.unsupportedFeatures(config).isEmpty)
        let authenticator = try Authenticator.make(jwt).get()
        #expect(authenticator.providers[0].jwks?.url == "https://127.0.0.1:8443/jwks.json")
        #expect(authenticator.providers[0].jwks?.fetchedKeys == nil)  // building fetches nothing

        let endpoint = try #require(JWKSEndpoint(url: "https://auth.test:8443/a/jwks.json?v=1"))
        #expect(endpoint.host == "auth.test" && endpoint.port == 8443 && endpoint.target == "/a/jwks.json?v=1")
        #expect(endpoint.authority == "auth.test:8443" && !endpoint.hostIsIPAddress)
        #expect(JWKSEndpoint(url: "https://10.0.0.1")?.target == "/")
        #expect(JWKSEndpoint(url: "https://10.0.0.1")?.hostIsIPAddress == true)

        fixture.expectError(minimalYAML + """
            jwt: { issuer: i, audiences: [a], jwks_url: "https://x.test/j", jwks_refresh: { min: 10m, max: 1m } }
            """, "jwt.jwks_refresh.max: must be at least min (10m)")
        fixture.expectError(minimalYAML + """
            jwt: { issuer: i, audiences: [a], jwks_url: "https://x.test/j", jwks_refresh: { min: 0s } }
            """, "jwt.jwks_refresh.min: must be at least 1s, got '0s'")
        fixture.expectError(minimalYAML + """
            jwt: { issuer: i, audiences: [a], keys: [{ kid: k, algorithm: HS256, secret: s }], jwks_ca: ca.pem }
            """, "jwt.jwks_ca: only applies with jwks_url")
        fixture.expectError(minimalYAML + """
            jwt: { issuer: i, audiences: [a], jwks_url: "https://x.test/j", jwks_ca: missing.pem }
            """, "jwt.jwks_ca: file not found: missing.pem")
        // A CA bundle OpenSSL cannot load fails start-up (and `validate`), not the first fetch.
        let badCA = try fixture.parse(minimalYAML + """
            jwt: { issuer: i, audiences: [a], jwks_url: "https://x.test/j", jwks_ca: ca.pem }
            """)
        #expect(GatewayBuilder.unsupportedFeatures(badCA).map(\.path) == ["jwt.jwks_ca"])
    }
}
