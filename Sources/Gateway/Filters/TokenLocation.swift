import NIOHTTP1

/// Where a request's bearer token was found, and how to take it out of what is forwarded
/// (`jwt.forward_token: false`, the default): the upstream gets the verified claims, not a
/// credential it could replay.
enum TokenLocation: Sendable, Equatable {
    /// `Authorization: Bearer …`: the field is dropped.
    case authorization
    /// This cookie is removed from `Cookie` (the field goes when nothing else is left).
    case cookie(String)
    /// This query parameter is removed from the target.
    case query(String)
    /// The element after `bearer` in `Sec-WebSocket-Protocol` is removed; `bearer` itself stays, so
    /// an upstream can select it as the subprotocol a browser insists on getting back.
    case websocketProtocol

    /// `head` without the token.
    func removed(from head: HTTPRequestHead) -> HTTPRequestHead {
        var head = head
        switch self {
        case .authorization:
            head.headers.remove(name: "authorization")
        case .cookie(let name):
            let values = head.headers["cookie"]
            head.headers.remove(name: "cookie")
            for value in values {
                let kept = value.split(separator: ";").filter { Self.cookieName($0) != Substring(name) }
                if !kept.isEmpty { head.headers.add(name: "cookie", value: kept.map { $0.trimmingSpaces }.joined(separator: "; ")) }
            }
        case .query(let name):
            guard let mark = head.uri.firstIndex(of: "?") else { break }
            let kept = head.uri[head.uri.index(after: mark)...].split(separator: "&", omittingEmptySubsequences: false)
                .filter { Self.parameterName($0) != Substring(name) }
            head.uri = String(head.uri[..<mark]) + (kept.isEmpty ? "" : "?" + kept.joined(separator: "&"))
        case .websocketProtocol:
            var elements = Self.protocolElements(head.headers["sec-websocket-protocol"])
            guard let bearer = elements.firstIndex(where: { $0.lowercased() == "bearer" }), bearer + 1 < elements.count
            else { break }
            elements.remove(at: bearer + 1)
            head.headers.replaceOrAdd(name: "sec-websocket-protocol", value: elements.joined(separator: ", "))
        }
        return head
    }

    /// The value of cookie `name` (RFC 6265 §4.2.1 `cookie-string`; a DQUOTE-wrapped value is
    /// unwrapped). The first one wins when a browser sends the name twice (the more specific path
    /// comes first, RFC 6265 §5.4).
    static func cookie(named name: String, in headers: HeadFields) -> Substring? {
        for value in headers["cookie"] {
            for pair in value.split(separator: ";") where Self.cookieName(pair) == Substring(name) {
                var cookie = pair[pair.index(after: pair.firstIndex(of: "=")!)...].trimmingSpaces
                if cookie.count >= 2, cookie.first == "\"", cookie.last == "\"" { cookie = cookie.dropFirst().dropLast() }
                return cookie
            }
        }
        return nil
    }

    /// The value of query parameter `name`, taken as is: a token is base64url and dots, so a
    /// percent-encoded one is refused as malformed rather than decoded.
    static func queryParameter(named name: String, in target: String) -> Substring? {
        guard let mark = target.firstIndex(of: "?") else { return nil }
        for parameter in target[target.index(after: mark)...].split(separator: "&") where Self.parameterName(parameter) == Substring(name) {
            // A bare `?access_token` is an empty (malformed) token.
            return parameter.firstIndex(of: "=").map { parameter[parameter.index(after: $0)...] } ?? ""
        }
        return nil
    }

    /// `Sec-WebSocket-Protocol: bearer, <token>[, …]` (the browser `new WebSocket(url, ["bearer",
    /// token, "app"])` form): the element following `bearer`.
    static func websocketProtocolToken(_ headers: HeadFields) -> Substring? {
        let elements = Self.protocolElements(headers["sec-websocket-protocol"])
        guard let bearer = elements.firstIndex(where: { $0.lowercased() == "bearer" }) else { return nil }
        return bearer + 1 < elements.count ? Substring(elements[bearer + 1]) : ""
    }

    private static func protocolElements(_ values: [String]) -> [String] {
        values.flatMap { $0.split(separator: ",").map { String($0.trimmingSpaces) } }
            .filter { !$0.isEmpty }
    }

    private static func cookieName(_ pair: Substring) -> Substring? {
        guard let equals = pair.firstIndex(of: "=") else { return nil }
        return pair[..<equals].trimmingSpaces
    }

    private static func parameterName(_ parameter: Substring) -> Substring? {
        guard let equals = parameter.firstIndex(of: "=") else { return parameter }
        return parameter[..<equals]
    }
}
