import Testing

@testable import Gateway

/// `HTTP2Stream.StateMachine` without a session: how one stream answers, event by event.
@Suite("HTTP/2 stream state machine")
struct HTTP2StreamStateMachineTests {
    typealias Machine = HTTP2Stream.StateMachine

    @Test("A bodiless request: the head ends the request half, and no body clock starts")
    func bodiless() {
        var machine = Machine()
        #expect(!machine.headComplete)
        expectThat(!machine.headersComplete(endStream: true))
        #expect(machine.requestEnded)
        // END_STREAM is taken once (trailers after it change nothing).
        expectThat(!machine.requestEndReceived())
    }

    @Test("Trailers end a request with a body once")
    func trailers() {
        var machine = Machine()
        expectThat(machine.headersComplete(endStream: false))
        #expect(!machine.requestEnded)
        expectThat(machine.requestEndReceived())
        expectThat(!machine.requestEndReceived())
    }

    @Test("A failure is answered with a response until one has started, then with a reset")
    func refusal() {
        var machine = Machine()
        _ = machine.headersComplete(endStream: true)
        #expect(machine.refusal == .respond)
        machine.responseStarts(bodiless: false)
        #expect(machine.refusal == .reset)
    }

    @Test("Request body credit: returned at once, held while the upstream is paused, owed back on resume")
    func credit() {
        var machine = Machine()
        _ = machine.headersComplete(endStream: false)
        expectThat(machine.bodyReceived(count: 100, forwarded: true) == 100)
        machine.pauseBody()
        expectThat(machine.bodyReceived(count: 30, forwarded: true) == 0)
        expectThat(machine.bodyReceived(count: 12, forwarded: true) == 0)
        // A body nobody forwards is dropped with its credit, paused or not.
        expectThat(machine.bodyReceived(count: 5, forwarded: false) == 5)
        expectThat(machine.resumeBody() == 42)
        expectThat(machine.resumeBody() == 0)
        expectThat(machine.bodyReceived(count: 7, forwarded: true) == 7)
    }

    @Test("A stalled body: 408 before any response, a reset during one, a quiet end after a whole one")
    func stall() {
        var unanswered = Machine()
        _ = unanswered.headersComplete(endStream: false)
        expectThat(unanswered.bodyStalled(responseBytesQueued: false) == .respondRequestTimeout)
        #expect(unanswered.resetsWhenAnswered)

        var streaming = Machine()
        _ = streaming.headersComplete(endStream: false)
        streaming.responseStarts(bodiless: false)
        expectThat(streaming.bodyStalled(responseBytesQueued: false) == .reset)

        var answered = Machine()
        _ = answered.headersComplete(endStream: false)
        answered.responseStarts(bodiless: true)
        expectThat(answered.bodyStalled(responseBytesQueued: false) == .resetWithoutError)
        // Whole but not yet read out: the client has not got it, so it is a reset.
        expectThat(answered.bodyStalled(responseBytesQueued: true) == .reset)

        var ended = Machine()
        _ = ended.headersComplete(endStream: true)
        expectThat(ended.bodyStalled(responseBytesQueued: false) == .none)
        var closed = Machine()
        _ = closed.headersComplete(endStream: false)
        expectThat(closed.close())
        expectThat(closed.bodyStalled(responseBytesQueued: false) == .none)
    }

    @Test("The data provider waits while bytes are due, is woken once, and ends the stream when all is read")
    func dataProvider() {
        var machine = Machine()
        _ = machine.headersComplete(endStream: true)
        machine.responseStarts(bodiless: false)
        expectThat(!machine.dataAvailable())
        expectThat(machine.responseRead(written: 0, queueEmpty: true) == .deferred)
        expectThat(machine.dataAvailable())
        expectThat(!machine.dataAvailable())
        expectThat(machine.responseRead(written: 10, queueEmpty: true) == .bytes(10, end: false))
        machine.responseEnded()
        expectThat(machine.responseRead(written: 5, queueEmpty: false) == .bytes(5, end: false))
        expectThat(machine.responseRead(written: 3, queueEmpty: true) == .bytes(3, end: true))
        #expect(machine.responseDelivered(responseBytesQueued: false))
    }

    @Test("A bodiless response (HEAD, 204, 304) ends with its HEADERS")
    func bodilessResponse() {
        var machine = Machine()
        _ = machine.headersComplete(endStream: true)
        machine.responseStarts(bodiless: true)
        expectThat(machine.responseRead(written: 0, queueEmpty: true) == .bytes(0, end: true))
    }

    @Test("The response end before any response changes nothing; the log sees an undelivered response")
    func endWithoutResponse() {
        var machine = Machine()
        _ = machine.headersComplete(endStream: true)
        machine.responseEnded()
        #expect(!machine.responseStarted)
        #expect(!machine.responseDelivered(responseBytesQueued: false))
    }

    @Test("The upstream leg resumes once after the buffer went over its high watermark")
    func watermarks() {
        var machine = Machine()
        expectThat(!machine.drained())
        machine.wentOverHighWater()
        expectThat(machine.drained())
        expectThat(!machine.drained())
    }

    @Test("Closing happens once")
    func closing() {
        var machine = Machine()
        expectThat(machine.close())
        expectThat(!machine.close())
        #expect(machine.closed)
    }
}
