import NIOCore
import NIOHTTP1
import Testing

@testable import Gateway

/// `HTTP1ServerHandler.StateMachine` without a channel: the connection's rules for keep-alive,
/// pipelining and read gating, event by event.
@Suite("HTTP/1.1 connection state machine")
struct HTTP1ConnectionStateMachineTests {
    typealias Machine = HTTP1ServerHandler.StateMachine

    static let head = HTTP1RequestPart.head(RequestHead(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")), keepAlive: true)

    /// A request decoded on an idle connection, its end too unless it has a body still coming.
    static func begin(_ machine: inout Machine, keepAlive: Bool = true, hasBody: Bool = false) {
        expectThat(machine.partDecoded(Self.head))
        machine.requestStarted(keepAliveRequested: keepAlive, hasBody: hasBody)
        guard !hasBody else { return }
        expectThat(machine.partDecoded(.end))
        expectThat(!machine.requestEnded())
    }

    /// The whole response to a request whose end is in: the request is finished.
    static func answer(_ machine: inout Machine) -> Machine.AfterRequest {
        _ = machine.responseStarts()
        expectThat(machine.responseEnded())
        return machine.requestFinished().next
    }

    /// A bodiless request served and answered; returns what follows it.
    static func serveOne(_ machine: inout Machine, keepAlive: Bool = true) -> Machine.AfterRequest {
        Self.begin(&machine, keepAlive: keepAlive)
        return Self.answer(&machine)
    }

    @Test("A keep-alive request leaves the connection open; HTTP/1.0 or Connection: close ends it")
    func keepAlive() {
        var machine = Machine(maxQueuedRequests: 8)
        #expect(Self.serveOne(&machine) == .serveQueued)
        #expect(machine.request == nil)
        #expect(Self.serveOne(&machine, keepAlive: false) == .closeAfterResponse)
    }

    @Test("A response written before the request body is all in closes the connection (the rest would parse as a request)")
    func answerBeforeBodyCloses() {
        var machine = Machine(maxQueuedRequests: 8)
        expectThat(machine.partDecoded(Self.head))
        machine.requestStarted(keepAliveRequested: true, hasBody: true)
        expectThat(machine.responseStarts())
        expectThat(!machine.responseEnded())
        #expect(machine.exchangeFinished() == .closeAfterResponse)
        // The same request with its body in first stays keep-alive.
        var whole = Machine(maxQueuedRequests: 8)
        expectThat(whole.partDecoded(Self.head))
        whole.requestStarted(keepAliveRequested: true, hasBody: true)
        expectThat(whole.partDecoded(.body(ByteBuffer(string: "x"))))
        expectThat(whole.partDecoded(.end))
        expectThat(!whole.requestEnded())
        expectThat(!whole.responseStarts())
        expectThat(whole.responseEnded())
        #expect(whole.exchangeFinished() == .requestFinished)
        expectThat(whole.requestFinished().next == .serveQueued)
    }

    @Test("A close-delimited response ends the connection even when keep-alive was asked")
    func closeDelimited() {
        var machine = Machine(maxQueuedRequests: 8)
        expectThat(machine.partDecoded(Self.head))
        machine.requestStarted(keepAliveRequested: true, hasBody: false)
        expectThat(!machine.requestEnded())
        expectThat(!machine.responseStarts())
        machine.responseIsCloseDelimited()
        expectThat(machine.responseEnded())
        expectThat(machine.requestFinished().next == .closeAfterResponse)
    }

    @Test("Parts after a complete request wait in order and are served after its response")
    func pipelining() {
        var machine = Machine(maxQueuedRequests: 8)
        Self.begin(&machine)
        // Two pipelined requests: queued, not served.
        for _ in 0..<2 {
            expectThat(!machine.partDecoded(Self.head))
            expectThat(!machine.partDecoded(.end))
        }
        // Nothing is taken from the queue while the first waits for its response.
        expectThat(machine.nextQueuedPart() == nil)
        expectThat(Self.answer(&machine) == .serveQueued)
        guard case .head = machine.nextQueuedPart() else {
            Issue.record("the queued head comes first")
            return
        }
        machine.requestStarted(keepAliveRequested: true, hasBody: false)
        guard case .end = machine.nextQueuedPart() else {
            Issue.record("then its end")
            return
        }
        expectThat(!machine.requestEnded())
        // Its end is in: the next head stays queued until this response is done.
        expectThat(machine.nextQueuedPart() == nil)
        #expect(machine.queued.count == 2)
    }

    @Test("Past the request cap, input is dropped and the last request served before the cut closes the connection")
    func cut() {
        var machine = Machine(maxQueuedRequests: 1)
        Self.begin(&machine)
        expectThat(!machine.partDecoded(Self.head))
        expectThat(!machine.partDecoded(.end))
        expectThat(!machine.partDecoded(Self.head))  // one too many: the cut
        #expect(machine.queued.discarding)
        expectThat(!machine.partDecoded(.end))
        expectThat(Self.answer(&machine) == .serveQueued)
        _ = machine.nextQueuedPart()
        machine.requestStarted(keepAliveRequested: true, hasBody: false)
        #expect(machine.request?.keepAlive == false)
    }

    @Test("Broken bytes after a complete request are answered after the requests before them")
    func brokenInputAfterRequests() {
        var machine = Machine(maxQueuedRequests: 8)
        Self.begin(&machine)
        expectThat(machine.parseFailed(.badRequest("malformed HTTP request")) == .answerAfterQueued)
        // Not while the request is in flight.
        expectThat(machine.takeBrokenInput() == nil)
        _ = machine.responseStarts()
        expectThat(machine.responseEnded())
        _ = machine.requestFinished()
        expectThat(machine.takeBrokenInput() != nil)
        expectThat(machine.takeBrokenInput() == nil)
    }

    @Test("A parse error mid-request is answered and closes, or cuts a response already started")
    func parseErrorMidRequest() {
        var idle = Machine(maxQueuedRequests: 8)
        expectThat(idle.parseFailed(.headersTooLarge) == .answerAndClose)
        #expect(idle.request != nil)
        expectThat(idle.responseStarts())

        var streaming = Machine(maxQueuedRequests: 8)
        expectThat(streaming.partDecoded(Self.head))
        streaming.requestStarted(keepAliveRequested: true, hasBody: true)
        _ = streaming.responseStarts()
        expectThat(streaming.parseFailed(.badRequest("malformed HTTP request")) == .abort)
    }

    @Test("Reads go on while a response is pending, and stop once pipelined parts pile up")
    func readGating() {
        var machine = Machine(maxQueuedRequests: 64)
        expectThat(machine.readRequested(writable: true))
        Self.begin(&machine)
        expectThat(machine.readRequested(writable: true))
        for _ in 0..<(Machine.maxQueuedParts / 2) {
            _ = machine.partDecoded(Self.head)
            _ = machine.partDecoded(.end)
        }
        expectThat(!machine.readRequested(writable: true))
        // Nothing changed: the read stays owed.
        expectThat(!machine.readMayResume(writable: true))
        _ = machine.responseStarts()
        expectThat(machine.responseEnded())
        _ = machine.requestFinished()
        while machine.nextQueuedPart() != nil {}
        expectThat(machine.readMayResume(writable: true))
        // Owed once, done once.
        expectThat(!machine.readMayResume(writable: true))
    }

    @Test("A client that does not read its responses stops being read; a request body is read regardless")
    func slowReader() {
        var machine = Machine(maxQueuedRequests: 8)
        expectThat(!machine.readRequested(writable: false))
        expectThat(machine.readMayResume(writable: true))
        expectThat(machine.partDecoded(Self.head))
        machine.requestStarted(keepAliveRequested: true, hasBody: true)
        // The body must come in for the response to be sent at all.
        expectThat(machine.readRequested(writable: false))
    }

    @Test("Upstream backpressure on the body holds reads until it lifts; the request's end lifts it too")
    func bodyBackpressure() {
        var machine = Machine(maxQueuedRequests: 8)
        expectThat(machine.partDecoded(Self.head))
        machine.requestStarted(keepAliveRequested: true, hasBody: true)
        machine.pauseRequestBody()
        expectThat(!machine.readRequested(writable: true))
        machine.resumeRequestBody()
        expectThat(machine.readMayResume(writable: true))
        machine.pauseRequestBody()
        expectThat(machine.partDecoded(.end))
        expectThat(!machine.requestEnded())
        _ = machine.responseStarts()
        expectThat(machine.responseEnded())
        _ = machine.requestFinished()
        #expect(!machine.bodyPaused)
    }

    @Test("A held WebSocket decoder holds reads; a tunnel gets the owed read, a refusal replaces the decoder")
    func heldDecoder() {
        var tunnel = Machine(maxQueuedRequests: 8)
        expectThat(tunnel.partDecoded(Self.head))
        tunnel.requestStarted(keepAliveRequested: true, hasBody: false)
        tunnel.holdParsing()
        expectThat(!tunnel.readRequested(writable: true))
        expectThat(tunnel.tunnelStarted())
        expectThat(tunnel.readRequested(writable: true))
        #expect(!tunnel.parsingHeld)

        var refused = Machine(maxQueuedRequests: 8)
        expectThat(refused.partDecoded(Self.head))
        refused.requestStarted(keepAliveRequested: true, hasBody: false)
        refused.holdParsing()
        expectThat(!refused.requestEnded())
        _ = refused.responseStarts()
        expectThat(refused.responseEnded())
        let finished = refused.requestFinished()
        #expect(finished.resumeParsing)
        #expect(finished.next == .serveQueued)
    }

    @Test("Draining closes an idle connection at once and a busy one after its response")
    func quiescing() {
        var idle = Machine(maxQueuedRequests: 8)
        expectThat(idle.quiesce())

        var busy = Machine(maxQueuedRequests: 8)
        expectThat(busy.partDecoded(Self.head))
        busy.requestStarted(keepAliveRequested: true, hasBody: false)
        expectThat(!busy.quiesce())
        expectThat(busy.responseStarts())
        #expect(busy.request?.keepAlive == false)
        expectThat(!busy.responseEnded())
        expectThat(busy.requestEnded())
        expectThat(busy.requestFinished().next == .closeAfterResponse)
        // A request that starts while draining is not kept alive either.
        var late = Machine(maxQueuedRequests: 8)
        _ = late.quiesce()
        late.requestStarted(keepAliveRequested: true, hasBody: false)
        #expect(late.request?.keepAlive == false)
    }

    @Test("Closing happens once; after it, parts are dropped and nothing is served")
    func closing() {
        var machine = Machine(maxQueuedRequests: 8)
        expectThat(machine.close())
        expectThat(!machine.close())
        expectThat(!machine.partDecoded(Self.head))
        expectThat(machine.nextQueuedPart() == nil)
        expectThat(!machine.readRequested(writable: true))
    }
}
