extension RequestExchange {
    /// The life of one proxied request, with no I/O: the exchange reports what happened (admitted
    /// past the limits, a connection ready, request parts from the client, response parts and
    /// failures from the upstream) and this returns what to do. It holds the rules that are easy
    /// to get wrong and costly when wrong: when a request may be sent again (a booking must never
    /// be made twice), which late events are ignored, when a connection may go back to the pool.
    ///
    /// States: `admitting` (limits, cache) → `connecting` → `awaitingResponse` →
    /// `streamingResponse` → `finished`. A connection lost before the response head may send the
    /// exchange back to `connecting` (a resend); anything may end it (`finished`), after which
    /// every event is a no-op.
    ///
    /// Generic over the connection so that tests drive it with plain objects.
    struct StateMachine<Connection: AnyObject> {
        enum State {
            /// Rate limits and the response cache are deciding; nothing is upstream yet.
            case admitting
            /// Waiting for a pooled or new upstream connection.
            case connecting
            /// Request head written; waiting for the response head.
            case awaitingResponse(Connection)
            case streamingResponse(Connection)
            case finished
        }

        private(set) var state: State = .admitting
        /// The whole request (head and body) came from the client.
        private(set) var requestComplete: Bool
        private var requestBodyStarted = false
        /// Set once the head's write was not refused whole (a whole request is written at the end
        /// of its event-loop tick): from then on the upstream may act on the request, so a
        /// non-idempotent one is never sent again.
        private(set) var requestSent = false
        private var retriedStaleConnection = false
        private var retriesLeft: Int
        private var responseKeepAlive = true
        /// The upstream accepted a WebSocket handshake: its response ends in a tunnel.
        private var switchingProtocols = false
        private let idempotent: Bool
        private let expectsContinue: Bool
        private var candidateCount = 0
        private var nextCandidate = 0

        /// - Parameters:
        ///   - idempotent: the method is idempotent (RFC 9110 §9.2.2).
        ///   - retries: how many other endpoints the request may go to after a failure.
        init(requestHasBody: Bool, idempotent: Bool, expectsContinue: Bool, retries: Int) {
            self.requestComplete = !requestHasBody
            self.idempotent = idempotent
            self.expectsContinue = expectsContinue
            self.retriesLeft = retries
        }

        var isAdmitting: Bool {
            if case .admitting = self.state { return true }
            return false
        }

        var isFinished: Bool {
            if case .finished = self.state { return true }
            return false
        }

        /// The connection the response is streaming from, if it is.
        var streamingConnection: Connection? {
            if case .streamingResponse(let connection) = self.state { return connection }
            return nil
        }

        /// Sending the request again is safe when it is idempotent and has no body or none has
        /// started (a streamed body is not kept).
        var resendableOnStaleConnection: Bool {
            self.idempotent && self.requestComplete && !self.requestBodyStarted
        }

        /// Every other event's answer once the exchange is over, for the exchange to end it.
        mutating func finish() {
            self.state = .finished
        }

        // MARK: Connecting

        enum StartAction: Equatable {
            case noCandidates
            /// Connect; `holdBody`: pause the client's body until a connection takes it.
            case connect(holdBody: Bool)
        }

        /// Admitted: the request goes upstream, to one of `candidates` endpoints in order.
        mutating func startUpstream(candidates: Int) -> StartAction {
            self.candidateCount = candidates
            self.nextCandidate = 0
            guard candidates > 0 else { return .noCandidates }
            self.state = .connecting
            return .connect(holdBody: !self.requestComplete)
        }

        enum CandidateAction: Equatable {
            case none
            /// Every candidate failed.
            case noneLeft
            /// Try the endpoint at this index of the candidate list.
            case candidate(Int)
        }

        mutating func nextEndpoint() -> CandidateAction {
            guard case .connecting = self.state else { return .none }
            guard self.nextCandidate < self.candidateCount else { return .noneLeft }
            self.nextCandidate += 1
            return .candidate(self.nextCandidate - 1)
        }

        enum ReadyAction: Equatable {
            /// The exchange ended while connecting: the connection goes back to the pool unused.
            case giveBack
            /// Write the head and the held body parts, then the end when `endRequest`, and flush.
            case writeRequest(endRequest: Bool)
        }

        mutating func connectionReady(_ connection: Connection) -> ReadyAction {
            guard case .connecting = self.state else { return .giveBack }
            self.state = .awaitingResponse(connection)
            self.requestSent = false
            return .writeRequest(endRequest: self.requestComplete)
        }

        enum WrittenAction: Equatable {
            /// The exchange moved on meanwhile (the write's failure was already handled).
            case none
            /// The channel was closed before the write: nothing reached the upstream.
            case lost
            /// The request is upstream. `armResponseTimer` once it is whole; otherwise the body
            /// may flow (`sendContinue` first for a client that asked for `100 Continue`).
            case sent(armResponseTimer: Bool, sendContinue: Bool, resumeBody: Bool)
        }

        /// Whether the request is bound for `connection` and no response has started.
        func isAwaitingResponse(on connection: Connection) -> Bool {
            guard case .awaitingResponse(let current) = self.state else { return false }
            return current === connection
        }

        mutating func requestWritten(to connection: Connection, channelIsActive: Bool) -> WrittenAction {
            guard case .awaitingResponse(let current) = self.state, current === connection else { return .none }
            guard channelIsActive else { return .lost }
            self.requestSent = true
            if self.requestComplete { return .sent(armResponseTimer: true, sendContinue: false, resumeBody: false) }
            return .sent(armResponseTimer: false, sendContinue: self.expectsContinue && !self.requestBodyStarted, resumeBody: true)
        }

        // MARK: Request parts from the client

        enum RequestPartAction: Equatable {
            /// No connection yet: keep the part for when one is ready.
            case hold
            case forward(Connection)
            case drop

            static func == (lhs: Self, rhs: Self) -> Bool {
                switch (lhs, rhs) {
                case (.hold, .hold), (.drop, .drop): return true
                case (.forward(let a), .forward(let b)): return a === b
                default: return false
                }
            }
        }

        mutating func requestBodyReceived() -> RequestPartAction {
            self.requestBodyStarted = true
            switch self.state {
            case .admitting, .connecting: return .hold
            case .awaitingResponse(let connection), .streamingResponse(let connection): return .forward(connection)
            case .finished: return .drop
            }
        }

        enum RequestEndAction: Equatable {
            case none
            /// Send the request's end; `armResponseTimer` when the response has not started.
            case forwardEnd(Connection, armResponseTimer: Bool)

            static func == (lhs: Self, rhs: Self) -> Bool {
                switch (lhs, rhs) {
                case (.none, .none): return true
                case (.forwardEnd(let a, let x), .forwardEnd(let b, let y)): return a === b && x == y
                default: return false
                }
            }
        }

        mutating func requestEndReceived() -> RequestEndAction {
            self.requestComplete = true
            switch self.state {
            case .awaitingResponse(let connection): return .forwardEnd(connection, armResponseTimer: true)
            case .streamingResponse(let connection): return .forwardEnd(connection, armResponseTimer: false)
            case .admitting, .connecting, .finished: return .none
            }
        }

        /// The client went away: returns the connection to close, if one was in use.
        mutating func cancel() -> Connection? {
            defer { self.state = .finished }
            switch self.state {
            case .awaitingResponse(let connection), .streamingResponse(let connection): return connection
            case .admitting, .connecting, .finished: return nil
            }
        }

        // MARK: Response parts from the upstream

        enum ResponseHeadAction {
            /// Relay the head to the client.
            case forward(Connection)
            /// A WebSocket handshake the upstream accepted: the connection becomes a tunnel at the
            /// response's end.
            case acceptSwitch(Connection)
            /// A 101 nobody asked for: Upgrade is hop-by-hop and never forwarded, so relaying it would
            /// leave the client on a protocol nobody speaks at this hop.
            case refuseSwitch
            /// A head out of order: the upstream broke HTTP framing.
            case protocolError
            /// A 5xx on a request with a stale entry to serve instead: discard the connection.
            case serveStale(Connection)
        }

        /// - Parameters:
        ///   - acceptsSwitch: the head is a `101` completing this request's WebSocket handshake.
        ///   - hasStaleFallback: a cached entry may answer instead of a 5xx (`stale-if-error`).
        mutating func responseHeadReceived(status: Int, keepAlive: Bool, acceptsSwitch: Bool, hasStaleFallback: Bool) -> ResponseHeadAction {
            // Before any of the request was written, a response answers nothing of ours.
            guard case .awaitingResponse(let connection) = self.state, self.requestSent else { return .protocolError }
            if status == 101 {
                guard acceptsSwitch else { return .refuseSwitch }
                self.switchingProtocols = true
                self.state = .streamingResponse(connection)
                return .acceptSwitch(connection)
            }
            if status >= 500 && hasStaleFallback {
                self.state = .finished
                return .serveStale(connection)
            }
            self.state = .streamingResponse(connection)
            self.responseKeepAlive = keepAlive
            return .forward(connection)
        }

        enum ResponseBodyAction {
            case forward(Connection)
            case protocolError
        }

        mutating func responseBodyReceived() -> ResponseBodyAction {
            guard case .streamingResponse(let connection) = self.state else { return .protocolError }
            return .forward(connection)
        }

        enum ResponseEndAction {
            /// The exchange is over; the connection goes back to the pool when `reusable`.
            case finish(Connection, reusable: Bool)
            /// The switch is complete: the connection is the tunnel's.
            case tunnel(Connection)
            case protocolError
        }

        mutating func responseEndReceived() -> ResponseEndAction {
            guard case .streamingResponse(let connection) = self.state else { return .protocolError }
            self.state = .finished
            if self.switchingProtocols { return .tunnel(connection) }
            return .finish(connection, reusable: self.responseKeepAlive && self.requestComplete)
        }

        // MARK: Failures

        enum LostAction {
            case none
            /// A reused connection died before any response byte: most likely the upstream closed
            /// it while idle. Close it and send the request once more on a fresh connection to
            /// the same endpoint; the endpoint is not blamed.
            case retryStale(Connection)
            /// Close it, blame the endpoint, and try the next candidate (within `retries`).
            case retryElsewhere(Connection)
            /// Close it, blame the endpoint, and answer with `GatewayError`.
            case fail(Connection, GatewayError)
            /// The response had started: the client's response cannot be completed.
            case abort(Connection)
        }

        /// The upstream connection failed or closed.
        ///
        /// - Parameters:
        ///   - connectionServedRequests: the connection came from the pool (it served earlier requests).
        ///   - takeRetry: takes one retry from the cluster's budget; asked only when a retry is allowed.
        mutating func upstreamLost(_ error: GatewayError, connectionServedRequests: Bool, takeRetry: () -> Bool) -> LostAction {
            switch self.state {
            case .awaitingResponse(let connection):
                // Sending a request again is safe when none of it was written (its body parts are
                // still held), or when it is idempotent and bodiless. A non-idempotent request the
                // upstream may have received is never sent twice: it could book twice.
                let resendable = !self.requestSent || self.resendableOnStaleConnection
                if resendable, connectionServedRequests, !self.retriedStaleConnection, error == .upstreamUnavailable {
                    self.retriedStaleConnection = true
                    self.state = .connecting
                    self.nextCandidate = max(0, self.nextCandidate - 1)
                    return .retryStale(connection)
                }
                if resendable, self.retriesLeft > 0, self.nextCandidate < self.candidateCount, takeRetry() {
                    self.retriesLeft -= 1
                    self.state = .connecting
                    return .retryElsewhere(connection)
                }
                var error = error
                // Sent and then lost: the upstream reset it, which `upstream_unavailable` alone does not tell.
                if error == .upstreamUnavailable && self.requestSent { error.sourceOverride = .upstreamReset }
                return .fail(connection, error)
            case .streamingResponse(let connection):
                self.state = .finished
                return .abort(connection)
            case .admitting, .connecting, .finished:
                return .none
            }
        }

        /// `response_timeout` fired: returns the connection to close, if the response is still awaited.
        mutating func responseTimedOut() -> Connection? {
            guard case .awaitingResponse(let connection) = self.state else { return nil }
            return connection
        }
    }
}
