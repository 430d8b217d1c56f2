import NIOCore

/// Backpressure by withholding `read()`: while paused, a read the pipeline asks for is remembered
/// and issued on resume. The upstream connection and both ends of a byte tunnel gate this way.
struct ReadGate {
    private var paused = false
    private var pending = false

    /// From the handler's `read(context:)`.
    mutating func read(_ context: ChannelHandlerContext) {
        if self.paused {
            self.pending = true
        } else {
            context.read()
        }
    }

    mutating func pause() { self.paused = true }

    mutating func resume(_ context: ChannelHandlerContext?) {
        guard self.paused else { return }
        self.paused = false
        if self.pending, let context {
            self.pending = false
            context.read()
        }
    }
}
