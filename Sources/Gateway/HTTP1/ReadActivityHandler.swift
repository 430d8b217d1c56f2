import NIOCore

/// Tells the HTTP/1 handler when the first byte of a new request arrives, which starts the
/// `client_header` clock (408). The decoder only reports complete heads, so without this a client
/// trickling a header byte every few seconds (slowloris) would look idle, and idle is a longer
/// timeout.
final class ReadActivityHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// Told once per `arm()`, on the next read, before the bytes reach the decoder: a direct
    /// call rather than a user event, which every handler between would pass on and the server
    /// handler would have to cast. Set by that handler when it is added, cleared when removed.
    var server: HTTP1ServerHandler?

    private var armed = true
    /// This loop's iteration stamp (`gateway_event_loop_tick_seconds`); made on the loop that runs
    /// the handler.
    private let tickSlot = EventLoopTicks.currentSlot()
    /// When bytes last arrived: a request body that stops arriving for `timeouts.idle` is cut off.
    private(set) var lastRead = NIODeadline.now()

    func arm() { self.armed = true }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.tickSlot.ioBegins()
        self.lastRead = .now()
        if self.armed {
            self.armed = false
            self.server?.requestBytesArrived()
        }
        context.fireChannelRead(data)
    }
}
