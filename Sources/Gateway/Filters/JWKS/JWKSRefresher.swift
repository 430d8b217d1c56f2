import JWTVerifier
import NIOCore
import Synchronization
import TLSClient

/// Keeps the keys of `jwt.jwks_url` in the authenticator's `JWTVerifier`, fetching in the
/// background: the thin driver around `JWKSRefreshStateMachine` (state changes under the lock,
/// fetches and timers after it — STYLE habit 2).
///
/// Requests never wait for it: a token whose `kid` is unknown is refused at once (`unknown_key`)
/// and only *nudges* the refresher (`keyNotFound()`), which fetches if the rate limit allows; the
/// next request with that kid passes once the fetch has landed. A failed fetch or an unusable
/// document never replaces the key set, so the last good one keeps verifying.
///
/// One refresher per config snapshot, idle until `start(on:)`; `GatewayServer` starts it with the
/// runtime and stops it on reload and drain, like the upstream `HealthChecker`.
final class JWKSRefresher: Sendable {
    typealias Fetch = @Sendable (EventLoop) -> EventLoopFuture<JWKSResponse>

    /// The configured URL (identifies the source across reloads).
    let url: String
    private let staticKeys: [VerificationKey]
    private let verifier: JWTVerifier
    private let fetchDocument: Fetch
    private let now: @Sendable () -> NIODeadline

    private struct State {
        var machine: JWKSRefreshStateMachine
        var eventLoop: EventLoop?
        var timer: Scheduled<Void>?
        /// The last good fetched set, and the document it came from (an identical document does
        /// not swap the keys, so the verified-token cache survives routine refreshes).
        var fetched: KeySet?
        var lastBody: [UInt8]?
    }
    private let state: Mutex<State>

    init(
        url: String, settings: JWKSRefreshStateMachine.Settings, staticKeys: [VerificationKey], verifier: JWTVerifier,
        now: @escaping @Sendable () -> NIODeadline = { .now() }, fetch: @escaping Fetch
    ) {
        self.url = url
        self.staticKeys = staticKeys
        self.verifier = verifier
        self.now = now
        self.fetchDocument = fetch
        self.state = Mutex(State(machine: JWKSRefreshStateMachine(settings: settings)))
    }

    /// Fetches over HTTPS with `JWKSFetcher`.
    convenience init(
        url: String, endpoint: JWKSEndpoint, tls: TLSClientContext, config: JWKSRefreshConfig,
        staticKeys: [VerificationKey], verifier: JWTVerifier
    ) {
        let timeout = TimeAmount(config.timeout)
        self.init(
            url: url, settings: .init(config), staticKeys: staticKeys, verifier: verifier,
            fetch: { loop in JWKSFetcher.fetch(endpoint, tls: tls, timeout: timeout, on: loop) })
    }

    /// The keys fetched last (nil before the first good fetch).
    var fetchedKeys: KeySet? { self.state.withLock { $0.fetched } }

    func start(on eventLoop: EventLoop) {
        let action = self.state.withLock { state in
            state.eventLoop = eventLoop
            return state.machine.start()
        }
        self.run(action)
    }

    func stop() {
        let timer = self.state.withLock { state in
            state.machine.stop()
            defer { state.timer = nil }
            return state.timer
        }
        timer?.cancel()
    }

    /// A token named a `kid` the verifier does not hold: maybe a key published since the last
    /// fetch. Rate-limited by the state machine; never waits.
    func keyNotFound() {
        let now = self.now()
        let action = self.state.withLock { $0.machine.unknownKey(now: now) }
        self.run(action)
    }

    /// On reload: a new snapshot with the same URL starts from the old one's last good set, so
    /// JWKS-signed tokens keep passing while the new refresher makes its first fetch.
    func adoptKeys(from previous: JWKSRefresher) {
        guard previous.url == self.url, previous !== self else { return }
        let (fetched, body) = previous.state.withLock { ($0.fetched, $0.lastBody) }
        guard let fetched else { return }
        let adopted = self.state.withLock { state -> Bool in
            guard state.fetched == nil else { return false }
            state.fetched = fetched
            state.lastBody = body
            return true
        }
        if adopted { self.verifier.replaceKeys(.merged(static: self.staticKeys, fetched: fetched)) }
    }

    // MARK: - Driving

    private func run(_ action: JWKSRefreshStateMachine.Action) {
        guard action == .fetch, let loop = self.state.withLock({ $0.eventLoop }) else { return }
        self.fetchDocument(loop).whenComplete { result in self.fetchCompleted(result) }
    }

    private func timerFired() {
        let now = self.now()
        let action = self.state.withLock { $0.machine.timerFired(now: now) }
        self.run(action)
    }

    private func fetchCompleted(_ result: Result<JWKSResponse, Error>) {
        let now = self.now()
        let outcome: Result<(KeySet, JWKSResponse), JWKSFetchError> = result
            .mapError { JWKSFetchError("\($0)") }
            .flatMap { response in
                do throws(JWTError) {
                    return .success((try KeySet.jwks(json: response.body), response))
                } catch {
                    return .failure(JWKSFetchError("not a JWK Set: \(error.detail)"))
                }
            }
        switch outcome {
        case .success(let (keys, response)):
            let maxAge = JWKSCacheControl.maxAge(response.cacheControl)
            let (deadline, changed) = self.state.withLock { state -> (NIODeadline?, Bool) in
                guard let deadline = state.machine.fetchSucceeded(now: now, maxAge: maxAge) else { return (nil, false) }
                let changed = state.lastBody != response.body
                state.fetched = keys
                state.lastBody = response.body
                return (deadline, changed)
            }
            if changed {
                self.verifier.replaceKeys(.merged(static: self.staticKeys, fetched: keys))
                let kids = keys.keys.map { $0.kid ?? "(no kid)" }.joined(separator: ", ")
                GatewayLog.info("jwt.jwks_url: \(keys.keys.count) key(s) loaded [\(kids)]")
                for reason in keys.skipped { GatewayLog.info("jwt.jwks_url: skipped \(reason)") }
            }
            self.schedule(deadline)
        case .failure(let error):
            let (deadline, kept) = self.state.withLock { state in
                (state.machine.fetchFailed(now: now), state.fetched?.keys.count ?? 0)
            }
            if let deadline {
                let seconds = Double((deadline - now).nanoseconds) / 1e9
                GatewayLog.error(
                    "jwt.jwks_url: fetch failed (\(error)); keeping the last good key set (\(kept) key(s)), "
                        + "retrying in \(seconds)s")
            }
            self.schedule(deadline)
        }
    }

    private func schedule(_ deadline: NIODeadline?) {
        guard let deadline, let loop = self.state.withLock({ $0.eventLoop }) else { return }
        let task = loop.scheduleTask(deadline: deadline) { self.timerFired() }
        let (previous, keep) = self.state.withLock { state -> (Scheduled<Void>?, Bool) in
            guard !state.machine.isStopped else { return (nil, false) }
            defer { state.timer = task }
            return (state.timer, true)
        }
        previous?.cancel()
        if !keep { task.cancel() }
    }
}
