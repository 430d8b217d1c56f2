import NIOCore
import NIOHTTP1

/// `GET` and `PUT /routes/NAME/split` on the admin listener. The weights go in the query string
/// (`PUT /routes/booking/split?blue=80&green=20`, every upstream of the split named once) so the
/// request has no body to frame. A change applies to the running config snapshot only: the next
/// reload (file change, SIGHUP, `POST /config/reload`) starts again from the file's weights.
enum SplitAdmin {
    static func response(_ head: RequestHead, runtime: GatewayRuntime, allocator: ByteBufferAllocator) -> LocalResponse? {
        guard head.method == .GET || head.method == .PUT else { return nil }
        let (path, query) = split(head.uri)
        guard path.hasPrefix("/routes/"), path.hasSuffix("/split") else { return nil }
        let name = path.dropFirst("/routes/".count).dropLast("/split".count)
        guard let route = runtime.routes.routes.first(where: { $0.name == name }) else {
            return error(.notFound, "no route named '\(name)'", allocator)
        }
        guard let split = route.split else { return error(.conflict, "route '\(name)' has no split", allocator) }
        if head.method == .PUT {
            if head.headers.contains(name: "transfer-encoding")
                || (head.headers.first(name: "content-length").flatMap { Int($0) } ?? 0) > 0 {
                return error(.badRequest, "weights go in the query string, e.g. ?blue=90&green=10", allocator)
            }
            var given: [String: Int] = [:]
            for pair in query.split(separator: "&") where !pair.isEmpty {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2, let weight = Int(parts[1]), (0...TrafficSplit.buckets).contains(weight) else {
                    return error(.badRequest, "expected upstream=weight with a weight in 0...\(TrafficSplit.buckets), got '\(pair)'", allocator)
                }
                given[String(parts[0])] = weight
            }
            let unknown = given.keys.filter { !split.upstreams.contains($0) }.sorted()
            guard unknown.isEmpty else {
                return error(.badRequest, "not in the split: \(unknown.joined(separator: ", ")) (split: \(split.upstreams.joined(separator: ", ")))", allocator)
            }
            guard given.count == split.upstreams.count else {
                return error(.badRequest, "name every upstream of the split: \(split.upstreams.joined(separator: ", "))", allocator)
            }
            guard split.setWeights(split.upstreams.map { given[$0]! }) else {
                return error(.badRequest, "at least one weight must be above 0", allocator)
            }
        }
        let entries = zip(split.upstreams, split.currentWeights).map { "{\"upstream\":\"\(JSON.escaped($0))\",\"weight\":\($1)}" }
        return .json(.ok, "{\"route\":\"\(JSON.escaped(route.name))\",\"split\":[\(entries.joined(separator: ","))]}", allocator: allocator)
    }

    private static func split(_ uri: String) -> (Substring, Substring) {
        guard let mark = uri.firstIndex(of: "?") else { return (Substring(uri), "") }
        return (uri[..<mark], uri[uri.index(after: mark)...])
    }

    private static func error(_ status: HTTPResponseStatus, _ message: String, _ allocator: ByteBufferAllocator) -> LocalResponse {
        .json(status, "{\"error\":\"\(JSON.escaped(message))\"}", allocator: allocator)
    }
}
