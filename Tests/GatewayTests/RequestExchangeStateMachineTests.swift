import Testing
@testable import Gateway

/// `RequestExchange`'s decisions alone: events in, actions out, no sockets. The rules that matter most
/// here are the resend rules (a booking must never be made twice) and that nothing happens after
/// the end.
@Suite struct RequestExchangeStateMachineTests {
    final class Connection {}
    typealias Machine = RequestExchange.StateMachine<Connection>

    /// A machine whose request is upstream on `connection`, the response not started.
    func sent(
        hasBody: Bool = false, idempotent: Bool = true, retries: Int = 0, candidates: Int = 1, on connection: Connection
    ) -> Machine {
        var machine = Machine(requestHasBody: hasBody, idempotent: idempotent, expectsContinue: false, retries: retries)
        _ = machine.startUpstream(candidates: candidates)
        _ = machine.nextEndpoint()
        _ = machine.connectionReady(connection)
        _ = machine.requestWritten(to: connection, channelIsActive: true)
        return machine
    }

    @Test func aBodilessRequestGoesThroughItsStatesAndNothingHappensAfterTheEnd() {
        let connection = Connection()
        var machine = Machine(requestHasBody: false, idempotent: true, expectsContinue: false, retries: 0)
        #expect(machine.isAdmitting)
        #expect(machine.startUpstream(candidates: 2) == .connect(holdBody: false))
        #expect(machine.nextEndpoint() == .candidate(0))
        #expect(machine.connectionReady(connection) == .writeRequest(endRequest: true))
        #expect(machine.requestWritten(to: connection, channelIsActive: true) == .sent(armResponseTimer: true, sendContinue: false, resumeBody: false))
        guard case .forward(let forwarded) = machine.responseHeadReceived(status: 200, keepAlive: true, acceptsSwitch: false, hasStaleFallback: false) else {
            Issue.record("expected the head to be forwarded"); return
        }
        #expect(forwarded === connection && machine.streamingConnection === connection)
        guard case .forward = machine.responseBodyReceived() else { Issue.record("expected the body to be forwarded"); return }
        guard case .finish(let released, let reusable) = machine.responseEndReceived() else { Issue.record("expected finish"); return }
        #expect(released === connection && reusable)
        #expect(machine.isFinished)

        // Late events from either side change nothing.
        #expect(machine.requestBodyReceived() == .drop)
        #expect(machine.requestEndReceived() == .none)
        #expect(machine.cancel() == nil)
        #expect(machine.responseTimedOut() == nil)
        #expect(machine.nextEndpoint() == .none)
        guard case .none = machine.upstreamLost(.upstreamUnavailable, connectionServedRequests: true, takeRetry: { true }) else {
            Issue.record("a loss after the end must do nothing"); return
        }
        guard case .protocolError = machine.responseEndReceived() else { Issue.record("a second end is out of order"); return }
        #expect(machine.connectionReady(Connection()) == .giveBack)
    }

    @Test func aRequestTheUpstreamMayHaveReceivedIsNeverSentAgainUnlessIdempotentAndBodiless() {
        // POST: never again, whatever the retry budget or the connection's history.
        let connection = Connection()
        var post = self.sent(idempotent: false, retries: 3, candidates: 3, on: connection)
        var asked = 0
        guard case .fail(let closed, let error) = post.upstreamLost(.upstreamUnavailable, connectionServedRequests: true, takeRetry: { asked += 1; return true }) else {
            Issue.record("a sent POST must fail, not be resent"); return
        }
        #expect(closed === connection && error == .upstreamUnavailable && error.source == .upstreamReset)
        #expect(asked == 0, "no retry is taken from the budget for a request that may not go again")

        // PUT whose body was streamed: idempotent, but the body is not kept.
        var put = Machine(requestHasBody: true, idempotent: true, expectsContinue: false, retries: 3)
        _ = put.startUpstream(candidates: 3)
        _ = put.nextEndpoint()
        _ = put.connectionReady(connection)
        _ = put.requestWritten(to: connection, channelIsActive: true)
        #expect(put.requestBodyReceived() == .forward(connection))
        #expect(put.requestEndReceived() == .forwardEnd(connection, armResponseTimer: true))
        guard case .fail = put.upstreamLost(.upstreamUnavailable, connectionServedRequests: true, takeRetry: { true }) else {
            Issue.record("a PUT with a streamed body must fail"); return
        }
    }

    @Test func aRequestNoneOfWhichWasSentGoesAgainEvenIfNotIdempotent() {
        let first = Connection(), second = Connection()
        var machine = Machine(requestHasBody: false, idempotent: false, expectsContinue: false, retries: 0)
        _ = machine.startUpstream(candidates: 1)
        #expect(machine.nextEndpoint() == .candidate(0))
        _ = machine.connectionReady(first)
        // The pooled connection was already closed: the head never left.
        #expect(machine.requestWritten(to: first, channelIsActive: false) == .lost)
        guard case .retryStale(let closed) = machine.upstreamLost(.upstreamUnavailable, connectionServedRequests: true, takeRetry: { true }) else {
            Issue.record("an unsent request on a stale connection goes again"); return
        }
        #expect(closed === first)
        #expect(machine.nextEndpoint() == .candidate(0), "the same endpoint, on a fresh connection")
        #expect(machine.connectionReady(second) == .writeRequest(endRequest: true))
        _ = machine.requestWritten(to: second, channelIsActive: true)
        guard case .fail(_, let error) = machine.upstreamLost(.upstreamUnavailable, connectionServedRequests: true, takeRetry: { true }) else {
            Issue.record("the stale retry is taken once, and this one was sent"); return
        }
        #expect(error.source == .upstreamReset)
    }

    @Test func anIdempotentRequestRetriesStaleOnceThenElsewhereWithinTheBudget() {
        var machine = self.sent(retries: 1, candidates: 2, on: Connection())
        guard case .retryStale = machine.upstreamLost(.upstreamUnavailable, connectionServedRequests: true, takeRetry: { false }) else {
            Issue.record("expected the free stale retry"); return
        }
        #expect(machine.nextEndpoint() == .candidate(0))
        let fresh = Connection()
        _ = machine.connectionReady(fresh)
        _ = machine.requestWritten(to: fresh, channelIsActive: true)
        guard case .retryElsewhere(let closed) = machine.upstreamLost(.upstreamUnavailable, connectionServedRequests: true, takeRetry: { true }) else {
            Issue.record("expected a retry on the next endpoint"); return
        }
        #expect(closed === fresh)
        #expect(machine.nextEndpoint() == .candidate(1))
        let other = Connection()
        _ = machine.connectionReady(other)
        _ = machine.requestWritten(to: other, channelIsActive: true)
        guard case .fail = machine.upstreamLost(.upstreamUnavailable, connectionServedRequests: false, takeRetry: { true }) else {
            Issue.record("the budget of one retry is spent"); return
        }
    }

    @Test func anEmptyClusterRetryBudgetOrNoFurtherEndpointMeansFailure() {
        var noBudget = self.sent(retries: 2, candidates: 2, on: Connection())
        guard case .fail(_, let error) = noBudget.upstreamLost(.badUpstreamResponse, connectionServedRequests: true, takeRetry: { false }) else {
            Issue.record("the cluster refused the retry"); return
        }
        // Only a connection loss is blamed on staleness; a bad response is the upstream's answer.
        #expect(error == .badUpstreamResponse)
        var lastEndpoint = self.sent(retries: 2, candidates: 1, on: Connection())
        var asked = false
        guard case .fail = lastEndpoint.upstreamLost(.upstreamTimeout, connectionServedRequests: false, takeRetry: { asked = true; return true }) else {
            Issue.record("no endpoint left to retry on"); return
        }
        #expect(!asked)
        var none = Machine(requestHasBody: false, idempotent: true, expectsContinue: false, retries: 0)
        #expect(none.startUpstream(candidates: 0) == .noCandidates)
        var exhausted = Machine(requestHasBody: false, idempotent: true, expectsContinue: false, retries: 0)
        _ = exhausted.startUpstream(candidates: 1)
        #expect(exhausted.nextEndpoint() == .candidate(0))
        #expect(exhausted.nextEndpoint() == .noneLeft)
    }

    @Test func aBodyWaitsForItsConnectionAndContinueIsSentOnlyToAClientStillWaiting() {
        let connection = Connection()
        var waiting = Machine(requestHasBody: true, idempotent: false, expectsContinue: true, retries: 0)
        #expect(waiting.startUpstream(candidates: 1) == .connect(holdBody: true))
        _ = waiting.nextEndpoint()
        #expect(waiting.connectionReady(connection) == .writeRequest(endRequest: false))
        #expect(waiting.requestWritten(to: connection, channelIsActive: true) == .sent(armResponseTimer: false, sendContinue: true, resumeBody: true))
        #expect(waiting.requestBodyReceived() == .forward(connection))
        #expect(waiting.requestEndReceived() == .forwardEnd(connection, armResponseTimer: true))

        var eager = Machine(requestHasBody: true, idempotent: false, expectsContinue: true, retries: 0)
        #expect(eager.requestBodyReceived() == .hold, "body during admission is held")
        _ = eager.startUpstream(candidates: 1)
        _ = eager.nextEndpoint()
        #expect(eager.requestBodyReceived() == .hold, "body while connecting is held")
        _ = eager.connectionReady(connection)
        #expect(eager.requestWritten(to: connection, channelIsActive: true) == .sent(armResponseTimer: false, sendContinue: false, resumeBody: true))
    }

    @Test func theClientLeavingHandsBackWhatever() {
        let connection = Connection()
        var connecting = Machine(requestHasBody: false, idempotent: true, expectsContinue: false, retries: 0)
        _ = connecting.startUpstream(candidates: 1)
        _ = connecting.nextEndpoint()
        #expect(connecting.cancel() == nil)
        #expect(connecting.connectionReady(connection) == .giveBack, "a connection that arrives late goes back unused")

        var awaiting = self.sent(on: connection)
        #expect(awaiting.cancel() === connection)
        #expect(awaiting.responseTimedOut() == nil)
        #expect(awaiting.requestWritten(to: connection, channelIsActive: true) == .none)
    }

    @Test func aSwitchIsTunnelledOnlyWhenThisRequestAskedForIt() {
        let connection = Connection()
        var unasked = self.sent(on: connection)
        guard case .refuseSwitch = unasked.responseHeadReceived(status: 101, keepAlive: true, acceptsSwitch: false, hasStaleFallback: false) else {
            Issue.record("an unasked 101 is refused"); return
        }
        var asked = self.sent(on: connection)
        guard case .acceptSwitch = asked.responseHeadReceived(status: 101, keepAlive: true, acceptsSwitch: true, hasStaleFallback: false) else {
            Issue.record("expected the switch"); return
        }
        guard case .tunnel(let tunnelled) = asked.responseEndReceived() else { Issue.record("expected the tunnel"); return }
        #expect(tunnelled === connection && asked.isFinished)
    }

    @Test func responsePartsOutOfOrderAreProtocolErrorsAndALossMidResponseAborts() {
        let connection = Connection()
        var machine = self.sent(on: connection)
        guard case .protocolError = machine.responseBodyReceived() else { Issue.record("body before head"); return }
        guard case .protocolError = machine.responseEndReceived() else { Issue.record("end before head"); return }
        _ = machine.responseHeadReceived(status: 200, keepAlive: true, acceptsSwitch: false, hasStaleFallback: false)
        guard case .protocolError = machine.responseHeadReceived(status: 200, keepAlive: true, acceptsSwitch: false, hasStaleFallback: false) else {
            Issue.record("a second head"); return
        }
        guard case .abort(let aborted) = machine.upstreamLost(.badUpstreamResponse, connectionServedRequests: true, takeRetry: { true }) else {
            Issue.record("a started response cannot be retried"); return
        }
        #expect(aborted === connection && machine.isFinished)
    }

    @Test func aResponseBeforeAnyOfTheRequestWasWrittenIsAProtocolError() {
        // A whole request waits for the end of its tick to be flushed: a head read before then
        // answers nothing the gateway sent.
        let connection = Connection()
        var machine = Machine(requestHasBody: false, idempotent: true, expectsContinue: false, retries: 0)
        _ = machine.startUpstream(candidates: 1)
        _ = machine.nextEndpoint()
        #expect(machine.connectionReady(connection) == .writeRequest(endRequest: true))
        #expect(machine.isAwaitingResponse(on: connection))
        #expect(!machine.isAwaitingResponse(on: Connection()))
        guard case .protocolError = machine.responseHeadReceived(status: 200, keepAlive: true, acceptsSwitch: false, hasStaleFallback: false) else {
            Issue.record("a head before the request was written"); return
        }
        #expect(machine.requestWritten(to: connection, channelIsActive: true) == .sent(armResponseTimer: true, sendContinue: false, resumeBody: false))
        guard case .forward = machine.responseHeadReceived(status: 200, keepAlive: true, acceptsSwitch: false, hasStaleFallback: false) else {
            Issue.record("the head after the request was written"); return
        }
        #expect(!machine.isAwaitingResponse(on: connection))
    }

    @Test func aConnectionGoesBackToThePoolOnlyWhenBothSidesEndedCleanly() {
        var closing = self.sent(on: Connection())
        _ = closing.responseHeadReceived(status: 200, keepAlive: false, acceptsSwitch: false, hasStaleFallback: false)
        guard case .finish(_, let reusable) = closing.responseEndReceived() else { Issue.record("expected finish"); return }
        #expect(!reusable, "Connection: close from the upstream")

        // The upstream answered before the whole upload arrived: the connection's request side is mid-body.
        let connection = Connection()
        var early = Machine(requestHasBody: true, idempotent: false, expectsContinue: false, retries: 0)
        _ = early.startUpstream(candidates: 1)
        _ = early.nextEndpoint()
        _ = early.connectionReady(connection)
        _ = early.requestWritten(to: connection, channelIsActive: true)
        _ = early.responseHeadReceived(status: 413, keepAlive: true, acceptsSwitch: false, hasStaleFallback: false)
        guard case .finish(_, let reusableEarly) = early.responseEndReceived() else { Issue.record("expected finish"); return }
        #expect(!reusableEarly)
    }

    @Test func aServerErrorWithAStaleEntryEndsTheExchangeAndTheTimeoutOnlyBitesBeforeTheHead() {
        let connection = Connection()
        var stale = self.sent(on: connection)
        guard case .serveStale(let discarded) = stale.responseHeadReceived(status: 503, keepAlive: true, acceptsSwitch: false, hasStaleFallback: true) else {
            Issue.record("expected the stale entry"); return
        }
        #expect(discarded === connection && stale.isFinished)
        var plain = self.sent(on: connection)
        guard case .forward = plain.responseHeadReceived(status: 503, keepAlive: true, acceptsSwitch: false, hasStaleFallback: false) else {
            Issue.record("a 5xx without a fallback is relayed"); return
        }
        #expect(plain.responseTimedOut() == nil)
        var awaiting = self.sent(on: connection)
        #expect(awaiting.responseTimedOut() === connection)
    }
}
