extension HTTP2Stream {
    /// The life of one HTTP/2 stream as the client sees it, with no I/O: where each half is, how a
    /// failure is answered (a response while none has started, a reset after), what a stalled body
    /// gets, when flow-control credit goes back to the client, and when nghttp2's data provider
    /// ends the stream or waits. `HTTP2Stream` reports events and does what the answers say; the
    /// request's data (record, exchange, response bytes) stays with it.
    ///
    /// Request half: `head` (HEADERS being decoded) → `body` → `ended` (END_STREAM). Response half:
    /// `none` → `started` (HEADERS submitted, body to come) → `complete` (every byte queued; the
    /// stream ends once they are read out). `closed` is final: nghttp2 closed the stream (done,
    /// reset by either side, or the connection went away).
    struct StateMachine {
        enum RequestHalf { case head, body, ended }
        enum ResponseHalf { case none, started, complete }

        private(set) var request = RequestHalf.head
        private(set) var response = ResponseHalf.none
        private(set) var closed = false
        /// The body stalled and was answered 408: the stream is reset once that response is out
        /// (the client is still sending a body nobody reads).
        private(set) var resetsWhenAnswered = false
        /// The upstream cannot take more of the request body: DATA is accepted but its
        /// flow-control credit is held back, so the client stops at its window.
        private(set) var bodyPaused = false
        /// Request bytes received while paused, whose credit is still owed to the client.
        private var unconsumed = 0
        /// nghttp2 asked for response bytes when none were queued: it must be told to ask again.
        private var dataDeferred = false
        /// The response buffer went over its high watermark: the upstream leg is told once it
        /// drains below the low one.
        private(set) var wasOverHighWater = false

        var headComplete: Bool { self.request != .head }
        var requestEnded: Bool { self.request == .ended }
        var responseStarted: Bool { self.response != .none }

        // MARK: Request

        /// The request head is decoded; true when a body follows (its clock starts).
        mutating func headersComplete(endStream: Bool) -> Bool {
            self.request = endStream ? .ended : .body
            return !endStream
        }

        /// True the first time: END_STREAM from the client.
        mutating func requestEndReceived() -> Bool {
            guard self.request != .ended else { return false }
            self.request = .ended
            return true
        }

        /// `count` request bytes arrived; returns the credit to give back now. A body nobody
        /// forwards (answered locally) is dropped with its credit returned; one the upstream is
        /// not taking keeps its credit until `resumeBody`.
        mutating func bodyReceived(count: Int, forwarded: Bool) -> Int {
            guard forwarded, self.bodyPaused else { return count }
            self.unconsumed += count
            return 0
        }

        mutating func pauseBody() { self.bodyPaused = true }

        /// The upstream takes the body again; returns the credit owed.
        mutating func resumeBody() -> Int {
            self.bodyPaused = false
            defer { self.unconsumed = 0 }
            return self.unconsumed
        }

        // MARK: Failures

        enum Refusal: Equatable {
            /// No response has started: the client gets an error response.
            case respond
            /// A response is under way: the stream can only be reset.
            case reset
        }

        /// How a failure of this request (an upstream error, a body too large) reaches the client.
        var refusal: Refusal { self.responseStarted ? .reset : .respond }

        enum StallAnswer: Equatable {
            case none
            /// Fully answered already (a 404, an upstream that answered early) and only the body
            /// is missing: the stream ends quietly (RST_STREAM NO_ERROR, RFC 9113 §8.1).
            case resetWithoutError
            case reset
            /// 408, then a reset once it is out.
            case respondRequestTimeout
        }

        /// The client sent no request body for `timeouts.idle` while it could have.
        mutating func bodyStalled(responseBytesQueued: Bool) -> StallAnswer {
            guard !self.closed, self.request != .ended else { return .none }
            switch self.response {
            case .complete where !responseBytesQueued: return .resetWithoutError
            case .started, .complete: return .reset
            case .none:
                self.resetsWhenAnswered = true
                return .respondRequestTimeout
            }
        }

        // MARK: Response

        /// A response's HEADERS go out; `bodiless`: nothing follows them (HEAD, 204, 304, an
        /// empty local response).
        mutating func responseStarts(bodiless: Bool) {
            self.response = bodiless ? .complete : .started
        }

        /// The last response byte is queued.
        mutating func responseEnded() {
            if self.response != .none { self.response = .complete }
        }

        /// Whether the client got the whole response (for the log): complete and read out.
        func responseDelivered(responseBytesQueued: Bool) -> Bool {
            self.response == .complete && !responseBytesQueued
        }

        // MARK: Data provider

        enum ReadAnswer: Equatable {
            case bytes(Int, end: Bool)
            /// Nothing to send yet: nghttp2 waits until `dataAvailable` says so.
            case deferred
        }

        /// nghttp2 read `written` bytes of the response; `queueEmpty`: nothing is left queued.
        mutating func responseRead(written: Int, queueEmpty: Bool) -> ReadAnswer {
            if queueEmpty && self.response == .complete { return .bytes(written, end: true) }
            if written == 0 {
                self.dataDeferred = true
                return .deferred
            }
            return .bytes(written, end: false)
        }

        /// Response bytes (or the end) were queued; true when nghttp2 must be told to read again.
        mutating func dataAvailable() -> Bool {
            defer { self.dataDeferred = false }
            return self.dataDeferred
        }

        mutating func wentOverHighWater() { self.wasOverHighWater = true }

        /// The buffer drained below its low watermark; true when the upstream leg was held back
        /// by it and is to resume.
        mutating func drained() -> Bool {
            defer { self.wasOverHighWater = false }
            return self.wasOverHighWater
        }

        // MARK: Lifecycle

        /// True the first time: nghttp2 closed the stream.
        mutating func close() -> Bool {
            guard !self.closed else { return false }
            self.closed = true
            return true
        }
    }
}
