import NIOCore
import RateLimiter
import RedisClient
import Synchronization

/// Why a rate-limit decision could not be made. The gateway maps any of these to
/// `rate_limits.on_store_error` (allow, or 503 `rate_limiter_unavailable`); `detail` is for logs.
public struct RateLimitStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    private enum Base: String, Sendable, Hashable {
        case storeUnavailable = "rate-limit store unavailable"
    }

    private let base: Base
    public let detail: String

    private init(_ base: Base, _ detail: String) {
        self.base = base
        self.detail = detail
    }

    /// Redis did not answer within the store's timeout, no connection is up, the connection
    /// broke, or Redis answered with an error or an unexpected reply.
    public static let storeUnavailable = RateLimitStoreError(.storeUnavailable, "")

    func with(_ detail: String) -> RateLimitStoreError { RateLimitStoreError(base, detail) }

    public static func == (a: RateLimitStoreError, b: RateLimitStoreError) -> Bool { a.base == b.base }
    public func hash(into h: inout Hasher) { h.combine(base) }
    public var description: String { detail.isEmpty ? base.rawValue : "\(base.rawValue): \(detail)" }
}

/// Rate-limit decisions in Redis: one EVALSHA of `RedisRateLimitScript` per request (all of the
/// request's policies, all-or-nothing, Redis `TIME` as the clock), under a strict deadline.
///
/// - The script is loaded with `SCRIPT LOAD` on first use (and by `prepare()`); on `NOSCRIPT`
///   (after `SCRIPT FLUSH`, a restart or a failover) it is loaded again and the call retried once.
/// - `check` never takes longer than `timeout` (default 20 ms, Envoy's default): after that it
///   fails with `RateLimitStoreError.storeUnavailable`, whatever Redis does. With Redis down the
///   pool fails commands at once, so the failure is immediate; the pool reconnects in the
///   background, so the first request after Redis is back is served at normal speed.
/// - A late reply is dropped; the connection's own command timeout (`RedisConfiguration`) decides
///   when a silent connection is replaced, so one slow moment does not tear down a pipeline
///   carrying many other requests.
/// - With a `DeniedCache`, a key known to be over its limit is answered locally until its reset.
/// - Redis Cluster: the keys of one EVALSHA must share a slot. Keys built by `RateLimitKey`
///   carry the client identity as hash tag, so a request's policies on one identity make one
///   call. Policies on different identities (an address and a user) land in different slots and
///   take two rounds, both inside one `timeout`: a peek of every slot (decided, nothing counted),
///   then, only when every slot allowed, the counting call on every slot. Sequential traffic is
///   exact. The race: between a request's peek and its count (one round trip), concurrent
///   requests may spend the last of a slot's budget, so its counting call can deny on that slot
///   while counting on the others. A slot never admits beyond its limit (its counting call
///   decides again); the error is over-count on the other slots, one `cost` per request caught
///   between its rounds — at most the multi-slot requests on the same identities in flight
///   during that round trip. docs/configuration.md states it for users.
public final class RedisRateLimitStore: Sendable {
    public let client: any RedisCommandSender
    public let timeout: TimeAmount
    private let deniedCache: DeniedCache?
    private let clockMs: @Sendable () -> Int64
    private let sha = Mutex<String?>(nil)

    /// `clockMs` (any monotonic milliseconds) is read only for the denied cache, which stores
    /// local instants; decisions use Redis `TIME`.
    public init(
        client: any RedisCommandSender,
        timeout: TimeAmount = .milliseconds(20),
        deniedCache: DeniedCache? = nil,
        clockMs: @escaping @Sendable () -> Int64 = { Int64((NIODeadline.now().uptimeNanoseconds / 1_000_000)) }
    ) {
        self.client = client
        self.timeout = timeout
        self.deniedCache = deniedCache
        self.clockMs = clockMs
    }

    public convenience init(
        pool: RedisConnectionPool,
        timeout: TimeAmount = .milliseconds(20),
        deniedCache: DeniedCache? = nil,
        clockMs: @escaping @Sendable () -> Int64 = { Int64((NIODeadline.now().uptimeNanoseconds / 1_000_000)) }
    ) {
        self.init(client: pool, timeout: timeout, deniedCache: deniedCache, clockMs: clockMs)
    }

    /// Loads the script now. Call it at startup: otherwise the first `check` pays for the load
    /// (an extra round trip and the Lua compile) inside its strict timeout.
    public func prepare() -> EventLoopFuture<Void> {
        loadScript().map { _ in }
    }

    /// Decides and counts one request against `requests` (policy, key) — see `MultiPolicy` for the
    /// all-or-nothing rule. `nowOverrideMs` is for tests only: production leaves it nil so every
    /// gateway instance uses Redis's clock.
    public func check(
        _ requests: [(PolicySpec, String)], cost: Int = 1, nowOverrideMs: Int64? = nil
    ) -> EventLoopFuture<MultiDecision> {
        let promise = client.nextEventLoop().makePromise(of: MultiDecision.self)
        check(requests, cost: cost, nowOverrideMs: nowOverrideMs) { promise.completeWith($0) }
        return promise.futureResult
    }

    /// `check` with a callback, the per-request path: `onDecision` is called exactly once, with
    /// a `RateLimitStoreError` on failure, on the event loop of the Redis connection that
    /// answered, or at once on the caller's thread (a denied-cache hit; no connection up). One
    /// closure per request where the future form costs two futures more and their callbacks.
    public func check(
        _ requests: [(PolicySpec, String)], cost: Int = 1, nowOverrideMs: Int64? = nil,
        onDecision: @escaping @Sendable (Result<MultiDecision, any Error>) -> Void
    ) {
        let cacheNow = nowOverrideMs ?? (deniedCache == nil ? 0 : clockMs())
        if let cache = deniedCache, let cached = cache.check(requests, now: cacheNow) {
            return onDecision(.success(cached))
        }
        guard client is RedisClusterClient, let groups = Self.slotGroups(requests) else {
            // The denied cache learns inside the reply's callback.
            return evaluate(requests, cost: cost, nowOverrideMs: nowOverrideMs, recordAt: cacheNow, onDecision: onDecision)
        }
        let decided = checkAcrossSlots(groups, cost: cost, nowOverrideMs: nowOverrideMs)
        guard let cache = deniedCache else { return decided.whenComplete(onDecision) }
        decided.whenComplete { result in
            if case .success(let decision) = result { cache.record(decision, now: cacheNow) }
            onDecision(result)
        }
    }

    /// The requests split by cluster slot, in first-seen order; nil when all share one slot.
    static func slotGroups(_ requests: [(PolicySpec, String)]) -> [[(PolicySpec, String)]]? {
        var order: [Int] = []
        var groups: [Int: [(PolicySpec, String)]] = [:]
        for r in requests {
            let slot = RedisClusterSlots.slot(for: r.1)
            if groups[slot] == nil { order.append(slot) }
            groups[slot, default: []].append(r)
        }
        return order.count > 1 ? order.map { groups[$0]! } : nil
    }

    /// One decision from per-slot decisions: allowed only when every slot allowed.
    static func merge(_ parts: [MultiDecision]) -> MultiDecision {
        let allowed = parts.allSatisfy(\.allowed)
        return MultiDecision(allowed: allowed, decisions: parts.flatMap(\.decisions))
    }

    /// Peeks every slot; counts on every slot only when all of them allowed. One deadline for
    /// both rounds, so a multi-slot check is bounded by `timeout` like any other.
    private func checkAcrossSlots(
        _ groups: [[(PolicySpec, String)]], cost: Int, nowOverrideMs: Int64?
    ) -> EventLoopFuture<MultiDecision> {
        let loop = client.nextEventLoop()
        let deadline = loop.now + timeout
        @Sendable func round(peek: Bool) -> EventLoopFuture<MultiDecision> {
            let calls = groups.map { group in
                let promise = loop.makePromise(of: MultiDecision.self)
                evaluate(group, cost: cost, nowOverrideMs: nowOverrideMs, peek: peek, deadline: deadline) { promise.completeWith($0) }
                return promise.futureResult
            }
            return EventLoopFuture.whenAllSucceed(calls, on: loop).map(Self.merge)
        }
        return round(peek: true).flatMap { peeked in
            guard peeked.allowed else { return loop.makeSucceededFuture(peeked) }
            // A counting call sent past the deadline would count a request already failed.
            guard loop.now < deadline else {
                return loop.makeFailedFuture(RateLimitStoreError.storeUnavailable.with("no decision within \(self.timeout)"))
            }
            return round(peek: false)
        }
    }

    /// One EVALSHA (keys in one slot) under the store's deadline, or under `deadline` when given
    /// (the two rounds of a multi-slot check share one). With `recordAt`, the denied cache (if
    /// any) learns the decision, at that time.
    private func evaluate(
        _ requests: [(PolicySpec, String)], cost: Int, nowOverrideMs: Int64?, peek: Bool = false,
        deadline: NIODeadline? = nil, recordAt cacheNow: Int64? = nil,
        onDecision: @escaping @Sendable (Result<MultiDecision, any Error>) -> Void
    ) {
        let slotKey = requests.first?.1
        // The deadline rides with the command: the connection's one timer lets this caller go at
        // it, with no timer of its own per check.
        let deadline = deadline ?? NIODeadline.now() + timeout
        let finish = DecisionDelivery(
            requests: requests, peek: peek, cache: cacheNow == nil ? nil : self.deniedCache, cacheNow: cacheNow ?? 0,
            timeout: timeout, onDecision: onDecision)
        guard let knownSHA = sha.withLock({ $0 }) else {
            // The first call (when `prepare()` was not awaited): load, then send.
            loadScript(key: slotKey).flatMap { sha in
                self.client.sendCommand(
                    RedisRateLimitScript.evalshaCommand(sha: sha, requests, cost: cost, nowOverrideMs: nowOverrideMs, peek: peek),
                    key: slotKey, timeout: nil, replyBy: deadline)
            }.withDeadline(deadline).whenComplete(finish.deliver)
            return
        }
        let command = RedisRateLimitScript.evalshaCommand(sha: knownSHA, requests, cost: cost, nowOverrideMs: nowOverrideMs, peek: peek)
        client.sendCommand(command, key: slotKey, timeout: nil, replyBy: deadline) { result in
            guard case .success(let reply) = result, let message = reply.errorMessage, message.hasPrefix("NOSCRIPT"),
                NIODeadline.now() < deadline
            else { return finish.deliver(result) }
            // Load and retry pipelined on one connection: one more round trip, not two. The SHA
            // is that of our own source, so it is the one SCRIPT LOAD will answer.
            self.client.send(commands: [["SCRIPT", "LOAD", RedisRateLimitScript.source], command], key: slotKey, timeout: nil)
                .map { $0[1] }.withDeadline(deadline).whenComplete(finish.deliver)
        }
    }

    /// Turns one EVALSHA reply into the caller's decision (the denied cache learning it first).
    private struct DecisionDelivery: Sendable {
        var requests: [(PolicySpec, String)]
        var peek: Bool
        var cache: DeniedCache?
        var cacheNow: Int64
        var timeout: TimeAmount
        var onDecision: @Sendable (Result<MultiDecision, any Error>) -> Void

        func deliver(_ result: Result<RESPValue, any Error>) {
            switch result {
            case .success(let reply):
                do {
                    let decision = try RedisRateLimitStore.decode(reply, requests, peek: peek)
                    cache?.record(decision, now: cacheNow)
                    onDecision(.success(decision))
                } catch {
                    onDecision(.failure(error as? RateLimitStoreError ?? RateLimitStoreError.storeUnavailable.with("\(error)")))
                }
            case .failure(let error as RedisError) where error == .deadlineExceeded:
                onDecision(.failure(RateLimitStoreError.storeUnavailable.with("no decision within \(timeout)")))
            case .failure(let error):
                onDecision(.failure(error as? RateLimitStoreError ?? RateLimitStoreError.storeUnavailable.with("\(error)")))
            }
        }
    }

    public func check(_ requests: [(PolicySpec, String)], cost: Int = 1, nowOverrideMs: Int64? = nil) async throws -> MultiDecision {
        try await check(requests, cost: cost, nowOverrideMs: nowOverrideMs).get()
    }

    private func loadScript(key: String? = nil) -> EventLoopFuture<String> {
        client.send(["SCRIPT", "LOAD", RedisRateLimitScript.source], key: key).flatMapThrowing { reply in
            guard let s = reply.string, reply.errorMessage == nil, s.count == 40 else {
                throw RateLimitStoreError.storeUnavailable.with("SCRIPT LOAD answered \(reply)")
            }
            self.sha.withLock { $0 = s }
            return s
        }
    }

    /// The script's reply, `[[allowed, remaining, reset_ms, retry_ms], …]`, as a `MultiDecision`.
    static func decode(_ reply: RESPValue, _ requests: [(PolicySpec, String)], peek: Bool = false) throws -> MultiDecision {
        if let message = reply.errorMessage {
            throw RateLimitStoreError.storeUnavailable.with("redis: \(message)")
        }
        // Rows read in place from the reply: no `[[Int64]]` copy of it.
        let rows = reply.array ?? []
        let decided = rows.count != requests.count ? nil : RedisRateLimitScript.decision(requests: requests, peek: peek) { index in
            guard let fields = rows[index].array, fields.count == 4, let allowed = fields[0].integer,
                let remaining = fields[1].integer, let resetMs = fields[2].integer, let retryMs = fields[3].integer
            else { return nil }
            return (allowed, remaining, resetMs, retryMs)
        }
        guard let decision = decided else {
            throw RateLimitStoreError.storeUnavailable.with("unexpected script reply \(reply)")
        }
        return decision
    }
}

extension EventLoopFuture where Value == RESPValue {
    /// This reply, or `RedisError.deadlineExceeded` at `deadline`: a timer of its own, for the
    /// rare paths (loading the script) that cannot hand the deadline to the connection.
    fileprivate func withDeadline(_ deadline: NIODeadline) -> EventLoopFuture<RESPValue> {
        let promise = self.eventLoop.makePromise(of: RESPValue.self)
        let timer = self.eventLoop.scheduleTask(deadline: deadline) { promise.fail(RedisError.deadlineExceeded) }
        self.whenComplete { result in
            timer.cancel()
            promise.completeWith(result)
        }
        return promise.futureResult
    }
}
