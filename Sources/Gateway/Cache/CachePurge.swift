import Foundation
import NIOCore
import NIOHTTP1

extension ResponseCache {
    /// `POST /cache/purge?prefix=/api/barbers` (admin listener): drops the entries whose path
    /// starts with the prefix on every cache route (no prefix: everything). Answers how many went.
    static func purgeResponse(uri: String, runtime: GatewayRuntime, allocator: ByteBufferAllocator) -> LocalResponse {
        let (path, query) = CachePolicy.split(uri)
        guard path == "/cache/purge" else {
            return .json(.notFound, #"{"error":"not found"}"#, allocator: allocator)
        }
        var prefix = "/"
        for pair in query.split(separator: "&") where pair.hasPrefix("prefix=") {
            prefix = String(pair.dropFirst("prefix=".count)).removingPercentEncoding ?? ""
        }
        guard prefix.hasPrefix("/") else {
            return .json(.badRequest, #"{"error":"prefix must be a path starting with /"}"#, allocator: allocator)
        }
        var purged = 0
        for route in runtime.routes.routes {
            if let cache = route.cache { purged += cache.purge(pathPrefix: prefix) }
        }
        return .json(.ok, #"{"purged":\#(purged),"prefix":"\#(JSON.escaped(prefix))"}"#, allocator: allocator)
    }
}
