import JWTVerifier
import NIOCore

/// When to fetch `jwt.jwks_url`, as a pure state machine (STYLE habit 1): events in, "fetch now"
/// and "next timer at" out, times injected by the caller, no I/O. `JWKSRefresher` drives it.
///
/// Rules:
/// - One fetch in flight at most; an event that would start a second one does nothing (the fetch
///   in flight will bring whatever is published).
/// - After a good fetch, the next one is due after the response's `max-age`, clamped to
///   `[min, max]` (`default` when the response has none).
/// - After a failed fetch, the next one is due after 1 s, doubling per consecutive failure, at most
///   `min`; the last good key set stays in use meanwhile (the driver never swaps on failure).
/// - A token with an unknown `kid` starts a fetch at once, but at most once per
///   `unknownKidInterval`, so a client sending random kids cannot hammer the JWKS server.
struct JWKSRefreshStateMachine {
    struct Settings: Sendable, Equatable {
        var min: TimeAmount
        var max: TimeAmount
        var defaultInterval: TimeAmount
        var unknownKidInterval: TimeAmount
        var firstRetry: TimeAmount = .seconds(1)

        init(min: TimeAmount, max: TimeAmount, defaultInterval: TimeAmount, unknownKidInterval: TimeAmount) {
            self.min = min
            self.max = Swift.max(min, max)
            self.defaultInterval = defaultInterval
            self.unknownKidInterval = unknownKidInterval
        }

        init(_ config: JWKSRefreshConfig) {
            self.init(
                min: .init(config.min), max: .init(config.max), defaultInterval: .init(config.defaultInterval),
                unknownKidInterval: .init(config.unknownKidInterval))
        }

        /// The delay until the next scheduled fetch after a good one.
        func refreshDelay(maxAge: TimeAmount?) -> TimeAmount {
            Swift.min(self.max, Swift.max(self.min, maxAge ?? self.defaultInterval))
        }

        /// The delay after the `failures`-th consecutive failure (1-based): 1 s, 2 s, 4 s … ≤ `min`.
        func retryDelay(failures: Int) -> TimeAmount {
            let doublings = Swift.min(Swift.max(failures - 1, 0), 30)
            let delay = self.firstRetry.nanoseconds.multipliedReportingOverflow(by: Int64(1) << doublings)
            return delay.overflow ? self.min : Swift.min(self.min, .nanoseconds(delay.partialValue))
        }
    }

    enum Action: Equatable {
        case none
        /// Start one fetch now.
        case fetch
    }

    private enum State: Equatable {
        case idle
        /// Waiting for the timer at this deadline.
        case waiting(until: NIODeadline)
        case fetching
        case stopped
    }

    let settings: Settings
    private var state = State.idle
    private var lastUnknownKidFetch: NIODeadline?
    private(set) var consecutiveFailures = 0

    init(settings: Settings) { self.settings = settings }

    /// When the driver's timer should fire next, if a fetch is scheduled.
    var nextFetch: NIODeadline? {
        if case .waiting(let deadline) = self.state { return deadline }
        return nil
    }

    var isFetching: Bool { self.state == .fetching }
    var isStopped: Bool { self.state == .stopped }

    /// The refresher starts: fetch at once (the static keys serve meanwhile).
    mutating func start() -> Action {
        guard self.state == .idle else { return .none }
        self.state = .fetching
        return .fetch
    }

    mutating func timerFired(now: NIODeadline) -> Action {
        guard case .waiting(let deadline) = self.state, now >= deadline else { return .none }
        self.state = .fetching
        return .fetch
    }

    /// A token named a key the set does not hold.
    mutating func unknownKey(now: NIODeadline) -> Action {
        switch self.state {
        case .idle, .fetching, .stopped:
            return .none
        case .waiting:
            if let last = self.lastUnknownKidFetch, now - last < self.settings.unknownKidInterval { return .none }
            self.lastUnknownKidFetch = now
            self.state = .fetching
            return .fetch
        }
    }

    /// Returns the deadline of the next scheduled fetch (nil once stopped).
    mutating func fetchSucceeded(now: NIODeadline, maxAge: TimeAmount?) -> NIODeadline? {
        guard self.state == .fetching else { return nil }
        self.consecutiveFailures = 0
        let deadline = now + self.settings.refreshDelay(maxAge: maxAge)
        self.state = .waiting(until: deadline)
        return deadline
    }

    /// Returns the deadline of the retry (nil once stopped).
    mutating func fetchFailed(now: NIODeadline) -> NIODeadline? {
        guard self.state == .fetching else { return nil }
        self.consecutiveFailures += 1
        let deadline = now + self.settings.retryDelay(failures: self.consecutiveFailures)
        self.state = .waiting(until: deadline)
        return deadline
    }

    mutating func stop() { self.state = .stopped }
}

// MARK: - Cache-Control (RFC 9111 §5.2)

enum JWKSCacheControl {
    /// The freshness lifetime a response grants, from its `Cache-Control` field values: `max-age`
    /// in seconds (RFC 9111 §5.2.2.1; the first occurrence wins, §4.2.1), or zero for `no-cache` /
    /// `no-store` (refetch as soon as the floor allows). `nil` when neither is present or the
    /// value is not a delta-seconds (then the configured default applies).
    static func maxAge(_ values: [String]) -> TimeAmount? {
        var noCache = false
        for value in values {
            for directive in value.split(separator: ",") {
                let parts = directive.split(separator: "=", maxSplits: 1)
                let name = parts[0].trimmingSpaces.lowercased()
                switch name {
                case "max-age":
                    guard parts.count == 2 else { return nil }
                    var argument = parts[1].trimmingSpaces
                    // §5.2: senders use the token form, recipients accept the quoted one too.
                    if argument.count >= 2, argument.first == "\"", argument.last == "\"" {
                        argument = argument.dropFirst().dropLast()
                    }
                    guard !argument.isEmpty, argument.utf8.allSatisfy({ (48...57).contains($0) }) else { return nil }
                    // §1.2.2: a delta-seconds too large to hold means "a very long time".
                    let seconds = argument.count > 9 ? 999_999_999 : Int64(argument)!
                    return .seconds(seconds)
                case "no-cache", "no-store":
                    noCache = true
                default:
                    continue
                }
            }
        }
        return noCache ? .zero : nil
    }
}

// MARK: - Key sets

extension KeySet {
    /// The key set the verifier uses: the static `jwt.keys` first (always present, and preferred
    /// when a JWKS key reuses a static `kid`), then the keys fetched from `jwt.jwks_url`.
    static func merged(static staticKeys: [VerificationKey], fetched: KeySet?) -> KeySet {
        guard let fetched else { return KeySet(keys: staticKeys) }
        return KeySet(keys: staticKeys + fetched.keys)
    }
}
