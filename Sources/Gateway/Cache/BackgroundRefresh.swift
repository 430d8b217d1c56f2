import NIOCore
import NIOHTTP1

/// The client side of a `stale-while-revalidate` refresh: nobody reads the response, the
/// exchange only fills the cache. Holds the exchange until it ends.
final class BackgroundRefresh: DownstreamResponder {
    private var exchange: ProxyExchange?

    static func start(_ make: (BackgroundRefresh) -> ProxyExchange, fill: CacheFill) {
        let responder = BackgroundRefresh()
        let exchange = make(responder)
        responder.exchange = exchange
        exchange.startRefresh(fill)
    }

    var isWritable: Bool { true }
    func sendContinue(for exchange: ProxyExchange) {}
    func sendResponseHead(for exchange: ProxyExchange, _ head: HTTPResponseHead, framing: HeaderRewriter.ResponseFraming) {}
    func sendResponseBody(for exchange: ProxyExchange, _ body: ByteBuffer) {}
    func flush(for exchange: ProxyExchange) {}
    func sendResponseEnd(for exchange: ProxyExchange) {}
    func sendErrorResponse(for exchange: ProxyExchange, _ error: GatewayError) { self.exchange = nil }
    func pauseRequestBody(for exchange: ProxyExchange) {}
    func resumeRequestBody(for exchange: ProxyExchange) {}
    func abortResponse(for exchange: ProxyExchange) { self.exchange = nil }
    func exchangeFinished(for exchange: ProxyExchange) { self.exchange = nil }
}
