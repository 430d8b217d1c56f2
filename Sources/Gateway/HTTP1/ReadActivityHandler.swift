import NIOCore

/// Tells the HTTP/1 handler when the first byte of a new request arrives, which starts the
/// `client_header` clock (408). The decoder only reports complete heads, so without this a client
/// trickling a header byte every few seconds (slowloris) would look idle, and idle is a longer
/// timeout.
final class ReadActivityHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// Fired once per `arm()` on the next read.
    struct RequestBytesArrived {}

    private var armed = true
    /// When bytes last arrived: a request body that stops arriving for `timeouts.idle` is cut off.
    private(set) var lastRead = NIODeadline.now()

    func arm() { self.armed = true }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.lastRead = .now()
        if self.armed {
            self.armed = false
            context.fireUserInboundEventTriggered(RequestBytesArrived())
        }
        context.fireChannelRead(data)
    }
}
