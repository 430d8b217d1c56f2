import NIOHTTP1

extension HTTP1ServerHandler {
    /// The connection's side of serving HTTP/1.1, with no I/O: where the request in flight is (its
    /// two halves), the pipelined requests waiting behind it, whether the connection stays open
    /// after a response, and whether socket reads go on. The handler reports what happened and does
    /// what the answer says; the request's data (record, exchange, id) stays with the handler.
    ///
    /// Modelled on NIO's `HTTPServerPipelineHandler`: one request at a time, later ones queued in
    /// order, reads held while too many wait, a quiescing connection closing after the response in
    /// flight. Unlike it, the queue is bounded by request count (what one read decodes to arrives at
    /// once) and input that does not parse after complete requests is answered after them.
    struct StateMachine {
        /// The request in flight, as far as the connection is concerned.
        struct Request {
            /// The connection may carry another request after this one.
            var keepAlive: Bool
            /// A body follows the head: until its end arrives, the connection cannot carry another request.
            let hasBody: Bool
            var requestEnded = false
            var responseStarted = false
            var responseEnded = false
            /// The response ends when the connection does.
            var closeDelimited = false

            /// Whether an unread request body would be left on the connection by answering now.
            var bodyOutstanding: Bool { self.hasBody && !self.requestEnded }
        }

        private(set) var request: Request?
        private(set) var queued: PipelinedRequests
        /// The gateway is draining: no request after the one in flight.
        private(set) var quiescing = false
        private(set) var closed = false
        /// The upstream cannot take more of the request body.
        private(set) var bodyPaused = false
        /// A WebSocket handshake's parsing stopped and waits until the upstream answers: its held
        /// bytes are the first frames of a tunnel after a 101, or the next request otherwise.
        private(set) var parsingHeld = false
        /// The connection is a WebSocket tunnel; its reads are the tunnel's business.
        private(set) var tunnelled = false
        private var readPending = false

        /// Reads continue while a response is pending (a keep-alive client's next request is
        /// usually not there yet, and holding reads would cost two epoll_ctl calls per request);
        /// they stop once a few pipelined parts are queued, which bounds what a pipelining client
        /// can make us hold.
        static let maxQueuedParts = 4

        init(maxQueuedRequests: Int) {
            self.queued = PipelinedRequests(maxRequests: maxQueuedRequests)
        }

        // MARK: Input

        /// A decoded part: true when it is for now (the request in flight, or a new one on an idle
        /// connection); a part for later is queued, and one after the input was cut is dropped.
        mutating func partDecoded(_ part: HTTP1RequestPart) -> Bool {
            guard !self.closed, !self.queued.discarding else { return false }
            if !self.queued.isEmpty || (self.request?.requestEnded ?? false) {
                self.queued.append(part)
                return false
            }
            return true
        }

        /// A request's head was dispatched (its answer may follow at once). Keep-alive ends with a
        /// draining gateway and with the last request before the pipelined input was cut.
        mutating func requestStarted(keepAliveRequested: Bool, hasBody: Bool) {
            let keepAlive = keepAliveRequested && !self.quiescing && !self.queued.cutHere
            self.request = Request(keepAlive: keepAlive, hasBody: hasBody)
        }

        /// A request the gateway makes up to carry an answer to input with no usable head (bytes
        /// that do not parse, a head that never came); the connection closes after it.
        mutating func errorRequestStarted() {
            if self.request == nil { self.requestStarted(keepAliveRequested: false, hasBody: false) }
        }

        /// The request's end arrived; true when its response is done too (the request is finished).
        mutating func requestEnded() -> Bool {
            guard self.request != nil else { return false }
            self.request!.requestEnded = true
            return self.request!.responseEnded
        }

        // MARK: Output

        /// A response starts; true when the connection closes after it (its head then says
        /// `Connection: close`). An unread request body would be parsed as the next request, so
        /// answering before it has all arrived closes the connection instead of draining it.
        mutating func responseStarts(forceClose: Bool = false) -> Bool {
            guard var request = self.request else { return true }
            request.responseStarted = true
            let close = forceClose || !request.keepAlive || self.quiescing || request.bodyOutstanding
            if close { request.keepAlive = false }
            self.request = request
            return close
        }

        mutating func responseIsCloseDelimited() {
            self.request?.closeDelimited = true
        }

        /// The response's end was written; true when the request's end arrived too (finished).
        mutating func responseEnded() -> Bool {
            guard self.request != nil else { return false }
            self.request!.responseEnded = true
            return self.request!.requestEnded
        }

        enum ExchangeEnd: Equatable {
            case requestFinished
            /// The upstream answered before the client finished sending: the rest of the body
            /// would be read as the next request, so the connection ends after the response.
            case closeAfterResponse
            case none
        }

        /// The proxied exchange ended (its response is written, or it failed and said so).
        func exchangeFinished() -> ExchangeEnd {
            guard let request = self.request else { return .none }
            if request.requestEnded { return .requestFinished }
            return request.responseEnded ? .closeAfterResponse : .none
        }

        enum AfterRequest: Equatable {
            case closeAfterResponse
            /// Serve the pipelined requests waiting, then wait for the next one.
            case serveQueued
        }

        /// Both halves of the request are done. `resumeParsing`: a WebSocket handshake the upstream
        /// refused held parsing, and the bytes after it are HTTP/1.1 again.
        mutating func requestFinished() -> (next: AfterRequest, resumeParsing: Bool) {
            let request = self.request
            self.request = nil
            self.bodyPaused = false
            let resumeParsing = self.parsingHeld
            self.parsingHeld = false
            let reusable = (request?.keepAlive ?? false) && !(request?.closeDelimited ?? false) && !self.quiescing
            return (reusable ? .serveQueued : .closeAfterResponse, resumeParsing)
        }

        /// The next queued part to serve: none while the request in flight waits for its response.
        mutating func nextQueuedPart() -> HTTP1RequestPart? {
            guard !self.closed, !(self.request?.requestEnded ?? false) else { return nil }
            return self.queued.popFirst()
        }

        /// What broken input after the served requests is answered with, once they all are.
        mutating func takeBrokenInput() -> GatewayError? {
            guard self.request == nil, !self.closed else { return nil }
            return self.queued.takeBrokenInput()
        }

        enum ParseFailure: Equatable {
            /// The bytes after a complete request are broken: the requests before are answered first.
            case answerAfterQueued
            /// Part of the response is out: the connection can only be cut.
            case abort
            /// Answer now (dropping any exchange) and close.
            case answerAndClose
        }

        mutating func parseFailed(_ error: GatewayError) -> ParseFailure {
            if self.request?.requestEnded ?? false {
                self.queued.discard(answering: error)
                return .answerAfterQueued
            }
            if self.request?.responseStarted ?? false { return .abort }
            self.errorRequestStarted()
            return .answerAndClose
        }

        // MARK: Reads

        /// Whether socket reads wait. `writable`: the socket takes more output (asked only when
        /// nothing else decides, as it is a channel call).
        func readsHeld(writable: @autoclosure () -> Bool) -> Bool {
            if self.parsingHeld || self.bodyPaused || self.closed || self.queued.discarding { return true }
            // A client that pipelines without reading its responses: the next requests wait in
            // the kernel until the responses written so far drain.
            let waitingForResponse = self.request?.requestEnded ?? true
            if waitingForResponse, !writable() { return true }
            return (self.request?.requestEnded ?? false) && self.queued.count >= Self.maxQueuedParts
        }

        /// The channel asks to read; true: read now (otherwise the read is owed for later).
        mutating func readRequested(writable: @autoclosure () -> Bool) -> Bool {
            if self.tunnelled { return true }
            if self.readsHeld(writable: writable()) {
                self.readPending = true
                return false
            }
            return true
        }

        /// Something that held reads changed; true: do the read owed.
        mutating func readMayResume(writable: @autoclosure () -> Bool) -> Bool {
            guard self.readPending, !self.readsHeld(writable: writable()) else { return false }
            self.readPending = false
            return true
        }

        mutating func pauseRequestBody() { self.bodyPaused = true }
        mutating func resumeRequestBody() { self.bodyPaused = false }

        mutating func holdParsing() { self.parsingHeld = true }

        /// The connection became a tunnel; true when a read was owed (reads were held while the
        /// handshake was pending).
        mutating func tunnelStarted() -> Bool {
            self.parsingHeld = false
            self.tunnelled = true
            defer { self.readPending = false }
            return self.readPending
        }

        // MARK: Lifecycle

        /// The gateway drains; true: close now (nothing in flight).
        mutating func quiesce() -> Bool {
            self.quiescing = true
            return self.request == nil
        }

        /// True the first time only: the caller closes.
        mutating func close() -> Bool {
            guard !self.closed else { return false }
            self.closed = true
            return true
        }

        /// The channel is gone: queued requests are never answered.
        mutating func connectionEnded() {
            self.queued.removeAll()
        }
    }
}
