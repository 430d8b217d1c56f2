import NIOCore
import NIOHTTP1

/// What the pipeline decided for one request.
enum PipelineDecision {
    /// Answer locally (health, redirect, errors).
    case respond(LocalResponse)
    case error(GatewayError)
    /// Proxy to this route's upstream.
    case proxy(Route, UpstreamCluster)
}

/// The protocol-independent request phases after decoding: identify → route → (CORS, JWT and rate
/// limit filters plug in here) → proxy. HTTP/1.1 requests and HTTP/2 streams both come through
/// `decide`, so a policy is enforced once whatever the protocol.
enum RequestPipeline {
    static func decide(
        method: HTTPMethod,
        target: String,
        host: String?,
        listener: ListenerInfo,
        runtime: GatewayRuntime,
        allocator: ByteBufferAllocator
    ) -> PipelineDecision {
        let path = target.utf8.firstIndex(of: UInt8(ascii: "?")).map { target[..<$0] } ?? Substring(target)

        if path.hasPrefix("/health"), let response = Health.response(
            path: path, method: method, listener: listener, runtime: runtime, allocator: allocator
        ) {
            return .respond(response)
        }

        switch listener.role {
        case .admin:
            return .error(.notFound)
        case .redirect:
            let port = runtime.httpsPort.load(ordering: .relaxed)
            return .respond(redirect(target: target, host: host, httpsPort: port == 0 ? nil : port, allocator: allocator))
        case .proxy:
            break
        }

        switch runtime.routes.match(host: host, path: path, method: method.rawValue) {
        case .notFound:
            return .error(.notFound)
        case .methodNotAllowed(let allow):
            return .error(.methodNotAllowed(allow: allow))
        case .matched(let route):
            guard let cluster = runtime.clusters[route.upstreamName] else { return .error(.noHealthyUpstream) }
            return .proxy(route, cluster)
        }
    }

    /// 308 keeps the method and body (unlike 301), so a POST sent to http:// is not turned into a GET.
    static func redirect(target: String, host: String?, httpsPort: Int?, allocator: ByteBufferAllocator) -> LocalResponse {
        let bareHost = host.map { RouteTable.normalizeHost($0) } ?? ""
        guard !bareHost.isEmpty, RequestValidator.isHostSafe(bareHost) else {
            return GatewayError.badRequest("a Host header is required").response(requestID: "", allocator: allocator)
        }
        var location = "https://" + bareHost
        if let httpsPort, httpsPort != 443 { location += ":\(httpsPort)" }
        location += target
        var response = LocalResponse.json(.permanentRedirect, "{\"redirect\":\"\(JSON.escaped(location))\"}", allocator: allocator)
        response.headers.add(name: "location", value: location)
        return response
    }
}

extension RequestValidator {
    /// Host names that may be echoed into a `Location` header.
    static func isHostSafe(_ host: Substring) -> Bool {
        host.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."),
                UInt8(ascii: "-"), UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: ":"):
                true
            default: false
            }
        }
    }
}
