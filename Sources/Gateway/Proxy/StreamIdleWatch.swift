import NIOCore

/// `timeouts.stream_idle` for a streamed response (`text/event-stream`, or a route with
/// `streaming: true`): the upstream must send a chunk at least this often once the head is out,
/// otherwise `onIdle` runs. One scheduled check per idle period, not one timer per chunk.
final class StreamIdleWatch {
    private let loop: EventLoop
    private let idle: TimeAmount
    /// On the loop's clock (virtual in `EmbeddedEventLoop` tests).
    private var last: NIODeadline
    private var task: Scheduled<Void>?
    private var onIdle: (() -> Void)?

    init(loop: EventLoop, idle: TimeAmount, onIdle: @escaping () -> Void) {
        self.loop = loop
        self.idle = idle
        self.onIdle = onIdle
        self.last = loop.now
        self.schedule(after: idle)
    }

    func touch() { self.last = self.loop.now }

    func cancel() {
        self.task?.cancel()
        self.task = nil
        self.onIdle = nil
    }

    private func schedule(after delay: TimeAmount) {
        self.task = self.loop.assumeIsolated().scheduleTask(in: delay) { [weak self] in
            guard let self, self.onIdle != nil else { return }
            let quiet = self.loop.now - self.last
            if quiet >= self.idle {
                let onIdle = self.onIdle
                self.cancel()
                onIdle?()
            } else {
                self.schedule(after: self.idle - quiet)
            }
        }
    }
}
