import NIOHTTP1

/// Entry points for the microbenchmarks in `benchmarks/Microbenchmarks` (package-benchmark, a
/// separate package) and nothing else: `@_spi(Benchmarks) import Gateway`. They reach the hot-path
/// internals (route table, request validation, header rewriting, CORS) without making those types
/// public. Each method runs exactly the production code for one operation; the set-up (config
/// text → `ConfigLoader.parse` → `GatewayBuilder.runtime`) happens once, outside the measurement.
/// Not an API: it may change with the benchmarks.
@_spi(Benchmarks)
public final class BenchmarkProbe: Sendable {
    private let runtime: GatewayRuntime
    private let info: ForwardingInfo

    /// Builds the runtime snapshot for `yaml` (a whole `gateway.yaml`; no files are read unless it
    /// names some). Upstream health checks are not started.
    public init(yaml: String) throws {
        let config = try ConfigLoader.parse(yaml: yaml, environment: [:], baseDirectory: "/")
        self.runtime = try GatewayBuilder.runtime(config, configHash: "benchmark")
        self.info = ForwardingInfo(
            peer: "203.0.113.7", requestID: "0f3c2a9e-5b1d-4c8e-9a7f-2d6b1e4c8a90", scheme: "https",
            host: "api.barberpro.com.ar", fallbackHost: "127.0.0.1:3001"
        )
    }

    /// One route lookup (`RouteTable.match`); the matched route's name, or nil (404/405).
    public func matchRoute(host: String?, path: Substring, method: String) -> String? {
        if case .matched(let route) = runtime.routes.match(host: host, path: path, method: method) { return route.name }
        return nil
    }

    /// One upstream request head (`HeaderRewriter.upstreamRequest`) for a validated bodiless
    /// request from an untrusted peer, as the proxy path calls it.
    public func rewriteUpstreamHead(_ head: HTTPRequestHead) -> HTTPRequestHead {
        HeaderRewriter.upstreamRequest(RequestHead(head), framing: .none, info: info, removing: runtime.removedFromUntrustedPeer)
    }

    /// What happens to a decoded HTTP/1.1 head before it is forwarded: framing validation
    /// (`RequestValidator`), the route lookup, and the upstream head. Nil when it would be refused.
    public func validateRouteAndRewrite(_ head: HTTPRequestHead) -> HTTPRequestHead? {
        let head = RequestHead(head)
        guard case .success(let framing) = RequestValidator.validate(head) else { return nil }
        let target = head.uri
        let path = target.utf8.firstIndex(of: UInt8(ascii: "?")).map { target[..<$0] } ?? Substring(target)
        guard case .matched = runtime.routes.match(host: head.headers.first(name: "host"), path: path, method: head.method.rawValue)
        else { return nil }
        return HeaderRewriter.upstreamRequest(head, framing: framing, info: info, removing: runtime.removedFromUntrustedPeer)
    }

    /// The config's `cors` origin check (`CORSPolicy.allowedOrigin`): the echoed origin, or nil.
    public func corsAllowedOrigin(_ headers: HTTPHeaders) -> String? {
        runtime.cors?.allowedOrigin(HeadFields(headers))
    }
}
