import NIOCore
import NIOHTTP1

/// A client request as the pipeline sees it, HTTP/1.1 or HTTP/2: the method, the target and the
/// fields as the client's bytes (`HeadFields`). Unlike NIO's `HTTPRequestHead` it builds no
/// `String` per field and no array of them: the HTTP/1.1 parser keeps the head's field lines, the
/// HTTP/2 stream writes its decoded fields as lines, and each phase reads the bytes in place.
struct RequestHead {
    var version: HTTPVersion
    var method: HTTPMethod
    var uri: String
    var headers: HeadFields

    init(version: HTTPVersion, method: HTTPMethod, uri: String, headers: HeadFields) {
        self.version = version
        self.method = method
        self.uri = uri
        self.headers = headers
    }

    /// A head decoded elsewhere (NIO's decoder, a test).
    init(_ head: HTTPRequestHead) {
        self.init(version: head.version, method: head.method, uri: head.uri, headers: HeadFields(head.headers))
    }

    /// The same head as NIO's type, for the paths that edit it.
    var httpHead: HTTPRequestHead {
        HTTPRequestHead(version: self.version, method: self.method, uri: self.uri, headers: self.headers.httpHeaders)
    }
}

/// A head's fields, a client request's or an upstream response's: the field lines as the peer sent
/// them (`FieldLines`), or decoded into `HTTPHeaders` (a head from a test, or one something edited:
/// a WebSocket over HTTP/2). Lookups compare names by bytes with ASCII case ignored, as
/// `HTTPHeaders` does, and make a `String` only of the value they return.
struct HeadFields: FieldSource {
    private enum Storage {
        case lines(FieldLines)
        case decoded(HTTPHeaders)
    }

    private var storage: Storage

    /// Lines that passed the strict grammar (`HTTP1Grammar.readFields`), or that an HTTP/2 stream
    /// wrote from fields nghttp2 and the stream checked (no CR, LF or colon where a line could
    /// break).
    init(lines: FieldLines) {
        self.storage = .lines(lines)
    }

    init(_ headers: HTTPHeaders) {
        self.storage = .decoded(headers)
    }

    /// The field lines, when the fields are still as the peer sent them (checked at the source:
    /// every name a token, every value field-vchars, SP and HTAB).
    var lines: FieldLines? {
        if case .lines(let lines) = self.storage { return lines }
        return nil
    }

    func forEachField(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Bool) {
        switch self.storage {
        case .lines(let lines): lines.forEachField(body)
        case .decoded(let headers): headers.forEachField(body)
        }
    }

    var fieldCount: Int {
        switch self.storage {
        case .lines(let lines): lines.fieldCount
        case .decoded(let headers): headers.count
        }
    }

    var count: Int { self.fieldCount }

    var encodedSize: Int {
        switch self.storage {
        case .lines(let lines): lines.encodedSize
        case .decoded(let headers): headers.encodedSize
        }
    }

    /// The fields as NIO's type.
    var httpHeaders: HTTPHeaders {
        switch self.storage {
        case .lines(let lines): lines.headers
        case .decoded(let headers): headers
        }
    }

    /// Calls `body` with the value of each field named `name` (ASCII case ignored), in order,
    /// while it returns true.
    func forEachValue(of name: String, _ body: (UnsafeBufferPointer<UInt8>) -> Bool) {
        name.withUTF8Bytes { wanted in
            self.forEachField { fieldName, value in
                guard bytesEqualIgnoringASCIICase(anyCase: fieldName, wanted) else { return true }
                return body(value)
            }
        }
    }

    /// The first value of the field `name`, ASCII case ignored.
    func first(name: String) -> String? {
        var found: String?
        self.forEachValue(of: name) { value in
            found = String(decoding: value, as: UTF8.self)
            return false
        }
        return found
    }

    func contains(name: String) -> Bool {
        var found = false
        self.forEachValue(of: name) { _ in
            found = true
            return false
        }
        return found
    }

    /// Every value of the field `name`, in order.
    subscript(name: String) -> [String] {
        var values: [String] = []
        self.forEachValue(of: name) { value in
            values.append(String(decoding: value, as: UTF8.self))
            return true
        }
        return values
    }

    /// The comma-separated elements of every `name` field, each trimmed of SP and HTAB, as
    /// `HTTPHeaders` splits them (nothing between two commas is no element; blanks are one).
    subscript(canonicalForm name: String) -> [Substring] {
        var elements: [Substring] = []
        for value in self[name] {
            for element in value.split(separator: ",") { elements.append(element.trimmingSpaces) }
        }
        return elements
    }

    // Edits decode the lines once; a later edit works on the decoded fields.

    mutating func add(name: String, value: String) {
        self.edit { $0.add(name: name, value: value) }
    }

    mutating func replaceOrAdd(name: String, value: String) {
        self.edit { $0.replaceOrAdd(name: name, value: value) }
    }

    mutating func remove(name: String) {
        self.edit { $0.remove(name: name) }
    }

    private mutating func edit(_ body: (inout HTTPHeaders) -> Void) {
        var headers = self.httpHeaders
        self.storage = .decoded([:])
        body(&headers)
        self.storage = .decoded(headers)
    }
}

extension HeadFields: ExpressibleByDictionaryLiteral {
    init(dictionaryLiteral elements: (String, String)...) {
        self.init(HTTPHeaders(elements))
    }
}

extension HeadFields: Sequence {
    /// Each field as `String`s, for the paths off the request's way (tests, admin): the request
    /// path uses the byte lookups above, which build no `String` per field.
    func makeIterator() -> IndexingIterator<[(name: String, value: String)]> {
        var fields: [(name: String, value: String)] = []
        fields.reserveCapacity(self.fieldCount)
        self.forEachField { name, value in
            fields.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
            return true
        }
        return fields.makeIterator()
    }
}
