import NIOCore
import NIOHTTP1

/// The client side of a `stale-while-revalidate` refresh: nobody reads the response, the
/// exchange only fills the cache. Holds the exchange until it ends.
final class BackgroundRefresh: DownstreamResponder {
    private var exchange: RequestExchange?

    static func start(_ make: (BackgroundRefresh) -> RequestExchange, fill: CacheFill) {
        let responder = BackgroundRefresh()
        let exchange = make(responder)
        responder.exchange = exchange
        exchange.startRefresh(fill)
    }

    var isWritable: Bool { true }
    func sendContinue(for exchange: RequestExchange) {}
    func sendResponseHead(for exchange: RequestExchange, _ head: HTTPResponseHead, framing: HeaderRewriter.ResponseFraming) {}
    func sendResponseBody(for exchange: RequestExchange, _ body: ByteBuffer) {}
    func flush(for exchange: RequestExchange) {}
    func sendResponseEnd(for exchange: RequestExchange) {}
    func sendErrorResponse(for exchange: RequestExchange, _ error: GatewayError) { self.exchange = nil }
    func pauseRequestBody(for exchange: RequestExchange) {}
    func resumeRequestBody(for exchange: RequestExchange) {}
    func abortResponse(for exchange: RequestExchange) { self.exchange = nil }
    func exchangeFinished(for exchange: RequestExchange) { self.exchange = nil }
}
