import NIOCore
import NIOEmbedded
import Testing
@testable import Gateway

/// The connection state machine alone: events in, actions out, no OpenSSL and no channel.
@Suite struct TLSStateMachineTests {
    let loop = EmbeddedEventLoop()

    func activeMachine() -> TLSConnectionStateMachine {
        var machine = TLSConnectionStateMachine()
        _ = machine.channelActive()
        _ = machine.handshakeStepped(.complete)
        return machine
    }

    @Test func handshakeProgression() {
        var machine = TLSConnectionStateMachine()
        #expect(machine.state == .idle)
        guard case .startHandshake = machine.channelActive() else { Issue.record("expected startHandshake"); return }
        #expect(machine.state == .handshaking)
        guard case .none = machine.channelActive() else { Issue.record("second channelActive must do nothing"); return }
        #expect(machine.ciphertextReceived() == .continueHandshake)
        guard case .wait = machine.handshakeStepped(.wantRead) else { Issue.record("expected wait"); return }
        guard case .completed(let buffered) = machine.handshakeStepped(.complete) else { Issue.record("expected completed"); return }
        #expect(buffered?.plaintext == nil)
        #expect(machine.state == .active)
        #expect(machine.ciphertextReceived() == .decrypt)
    }

    @Test func writesBeforeHandshakeAreBufferedUntilItCompletes() throws {
        var machine = TLSConnectionStateMachine()
        _ = machine.channelActive()
        let first = self.loop.makePromise(of: Void.self)
        let second = self.loop.makePromise(of: Void.self)
        guard case .buffered = machine.write(ByteBuffer(string: "GET "), promise: first) else { Issue.record("expected buffered"); return }
        guard case .none = machine.flush() else { Issue.record("flush during handshake must not encrypt"); return }
        _ = machine.write(ByteBuffer(string: "unflushed"), promise: second)
        guard case .completed(let buffered) = machine.handshakeStepped(.complete) else { Issue.record("expected completed"); return }
        let batch = try #require(buffered)
        // Only what was flushed goes out; the later write waits for its own flush.
        #expect(String(buffer: batch.plaintext) == "GET ")
        #expect(batch.promises.count == 1)
        batch.promises.forEach { $0.succeed() }
        guard case .encrypt(let next) = machine.flush() else { Issue.record("expected encrypt"); return }
        #expect(String(buffer: next.plaintext) == "unflushed")
        next.promises.forEach { $0.succeed() }
        try first.futureResult.wait()
        try second.futureResult.wait()
    }

    @Test func writesAreCoalescedPerFlush() {
        var machine = self.activeMachine()
        _ = machine.write(ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n"), promise: self.loop.makePromise())
        _ = machine.write(ByteBuffer(string: "body"), promise: self.loop.makePromise())
        guard case .encrypt(let batch) = machine.flush() else { Issue.record("expected encrypt"); return }
        #expect(String(buffer: batch.plaintext) == "HTTP/1.1 200 OK\r\n\r\nbody")
        #expect(batch.promises.count == 2)
        batch.promises.forEach { $0.succeed() }
        guard case .none = machine.flush() else { Issue.record("nothing left to flush"); return }
    }

    @Test func handshakeFailureFailsBufferedWrites() {
        var machine = TLSConnectionStateMachine()
        _ = machine.channelActive()
        let promise = self.loop.makePromise(of: Void.self)
        _ = machine.write(ByteBuffer(string: "x"), promise: promise)
        guard case .fail(let error, let promises) = machine.handshakeStepped(.failed(.handshakeFailed)) else {
            Issue.record("expected fail")
            return
        }
        #expect(error == .handshakeFailed)
        #expect(promises.count == 1)
        promises.forEach { $0.fail(error) }
        #expect(machine.state == .closed)
        #expect(machine.ciphertextReceived() == .discard)
        guard case .failWrite = machine.write(ByteBuffer(string: "late"), promise: nil) else { Issue.record("write after close must fail"); return }
    }

    @Test func closeSendsCloseNotifyThenClosesOnPeerCloseNotify() throws {
        var machine = self.activeMachine()
        let closePromise = self.loop.makePromise(of: Void.self)
        let unflushed = self.loop.makePromise(of: Void.self)
        _ = machine.write(ByteBuffer(string: "never flushed"), promise: unflushed)
        guard case .sendCloseNotify(let failed) = machine.close(mode: .all, promise: closePromise) else {
            Issue.record("expected sendCloseNotify")
            return
        }
        #expect(failed.count == 1)
        failed.forEach { $0.fail(ChannelError.ioOnClosedChannel) }
        #expect(machine.state == .closing)
        // A second close joins the first.
        guard case .chain = machine.close(mode: .all, promise: nil) else { Issue.record("expected chain"); return }
        // Application data arriving now is dropped while we wait for close_notify.
        guard case .discardAndContinue = machine.readStepped(.data) else { Issue.record("expected discard"); return }
        guard case .closeChannel(let promises) = machine.readStepped(.closeNotify) else { Issue.record("expected closeChannel"); return }
        #expect(promises.count == 1)
        promises.forEach { $0.succeed() }
        try closePromise.futureResult.wait()
        #expect(machine.state == .closed)
    }

    @Test func closeWaitTimesOut() {
        var machine = self.activeMachine()
        _ = machine.close(mode: .all, promise: nil)
        guard case .closeChannel = machine.closeTimedOut() else { Issue.record("expected closeChannel"); return }
        guard case .none = machine.closeTimedOut() else { Issue.record("second timeout must do nothing"); return }
    }

    @Test func peerCloseNotifyWhileActiveIsAnswered() {
        var machine = self.activeMachine()
        guard case .answerCloseNotifyAndClose = machine.readStepped(.closeNotify) else { Issue.record("expected answer"); return }
        #expect(machine.state == .closed)
    }

    @Test func closeBeforeHandshakeClosesDirectly() {
        var machine = TLSConnectionStateMachine()
        _ = machine.channelActive()
        guard case .closeChannel(_, let failed) = machine.close(mode: .all, promise: nil) else { Issue.record("expected closeChannel"); return }
        #expect(failed.isEmpty)
    }

    @Test func eofWithoutCloseNotifyIsUnclean() {
        var active = self.activeMachine()
        guard case .cleanUp(let error, _, _) = active.channelInactive() else { Issue.record("expected cleanUp"); return }
        #expect(error == .uncleanShutdown)

        var halfClosed = self.activeMachine()
        guard case .fail(let halfError, _) = halfClosed.inputClosed() else { Issue.record("expected fail"); return }
        #expect(halfError == .uncleanShutdown)

        var closing = self.activeMachine()
        _ = closing.close(mode: .all, promise: nil)
        guard case .cleanUp(let closingError, _, _) = closing.channelInactive() else { Issue.record("expected cleanUp"); return }
        #expect(closingError == nil)
    }

    @Test func handshakeTimeoutOnlyBeforeCompletion() {
        var handshaking = TLSConnectionStateMachine()
        _ = handshaking.channelActive()
        guard case .fail(let error, _) = handshaking.handshakeTimedOut() else { Issue.record("expected fail"); return }
        #expect(error == .handshakeTimedOut)

        var active = self.activeMachine()
        guard case .none = active.handshakeTimedOut() else { Issue.record("timeout after handshake must be ignored"); return }
    }
}
