import NIOCore

/// `timeouts.stream_idle` for a streamed response (`text/event-stream`, or a route with
/// `streaming: true`): the upstream must send a chunk at least this often once the head is out,
/// otherwise `onIdle` runs. One scheduled check per idle period, not one timer per chunk.
final class StreamIdleWatch {
    private let loop: EventLoop
    private let idle: TimeAmount
    private var last = NIODeadline.now()
    private var task: Scheduled<Void>?
    private var onIdle: (() -> Void)?

    init(loop: EventLoop, idle: TimeAmount, onIdle: @escaping () -> Void) {
        self.loop = loop
        self.idle = idle
        self.onIdle = onIdle
        self.schedule(after: idle)
    }

    func touch() { self.last = .now() }

    func cancel() {
        self.task?.cancel()
        self.task = nil
        self.onIdle = nil
    }

    private func schedule(after delay: TimeAmount) {
        self.task = self.loop.assumeIsolated().scheduleTask(in: delay) { [weak self] in
            guard let self, self.onIdle != nil else { return }
            let quiet = NIODeadline.now() - self.last
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
