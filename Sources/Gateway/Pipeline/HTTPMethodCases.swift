import NIOHTTP1

// NIO's `==` on `HTTPMethod` is the standard library's for `RawRepresentable` types: each call
// builds both sides' `rawValue` strings and compares them (~20 per proxied request, measured).
// The request path tests a method's case instead.
extension HTTPMethod {
    var isHEAD: Bool {
        if case .HEAD = self { return true }
        return false
    }

    var isCONNECT: Bool {
        if case .CONNECT = self { return true }
        return false
    }

    var isOPTIONS: Bool {
        if case .OPTIONS = self { return true }
        return false
    }

    /// The common methods (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT) read from
    /// their bytes, case-sensitively as RFC 9110 §9.1 names them; nil for any other.
    init?(commonMethodBytes raw: UnsafeRawBufferPointer) {
        let bytes = raw.assumingMemoryBound(to: UInt8.self)
        func equals(_ name: StaticString) -> Bool { bytesEqual(bytes, name) }
        switch bytes.count {
        case 3 where equals("GET"): self = .GET
        case 3 where equals("PUT"): self = .PUT
        case 4 where equals("POST"): self = .POST
        case 4 where equals("HEAD"): self = .HEAD
        case 5 where equals("PATCH"): self = .PATCH
        case 5 where equals("TRACE"): self = .TRACE
        case 6 where equals("DELETE"): self = .DELETE
        case 7 where equals("OPTIONS"): self = .OPTIONS
        case 7 where equals("CONNECT"): self = .CONNECT
        default: return nil
        }
    }
}

/// A set of methods (`retries.methods`) asked per request: a bit for each common method, so the
/// question builds, hashes and compares no string; any other method by its name.
struct HTTPMethodSet: Sendable {
    private var bits: UInt16 = 0
    private var others: Set<String> = []

    init<Names: Sequence>(_ names: Names) where Names.Element == String {
        for name in names {
            let method = HTTPMethod(rawValue: name)
            if let bit = Self.bit(method) { self.bits |= bit } else { self.others.insert(name) }
        }
    }

    func contains(_ method: HTTPMethod) -> Bool {
        if let bit = Self.bit(method) { return self.bits & bit != 0 }
        return !self.others.isEmpty && self.others.contains(method.rawValue)
    }

    private static func bit(_ method: HTTPMethod) -> UInt16? {
        switch method {
        case .GET: 1 << 0
        case .HEAD: 1 << 1
        case .POST: 1 << 2
        case .PUT: 1 << 3
        case .DELETE: 1 << 4
        case .OPTIONS: 1 << 5
        case .PATCH: 1 << 6
        case .TRACE: 1 << 7
        case .CONNECT: 1 << 8
        default: nil
        }
    }
}
