import NIOCore
import NIOHTTP1
import Testing

@testable import Gateway

/// The request's fields are read as the client's bytes (the HTTP/1.1 parser's slice of the read
/// buffer, the HTTP/2 stream's lines); every lookup the pipeline makes must answer as NIO's
/// `HTTPHeaders` does for the same fields.
@Suite("Request fields as bytes")
struct RequestFieldsTests {
    static let names = ["Host", "host", "Origin", "X-Forwarded-For", "x-forwarded-for", "Connection", "cookie", "Cookie", "a", "X-A"]
    static let values = [
        "", "x", " padded\t", "keep-alive", "close", "Keep-Alive, Close", "keep-alive, keep-alive", "1.2.3.4, , 5.6.7.8",
        "a,b,,c", " , ", "https://app.barberpro.com.ar", "caf\u{e9}", "v=1; w=2",
    ]

    /// The fields as the HTTP/1.1 parser keeps them: the head's lines, sliced out of a buffer that
    /// holds more than them.
    static func parsed(_ fields: [(String, String)]) throws -> RequestHead {
        var text = "GET /x HTTP/1.1\r\n"
        for (name, value) in fields { text += "\(name): \(value)\r\n" }
        text += "\r\nGET /next HTTP/1.1\r\n"
        var parser = HTTP1RequestParser(maxHeadBytes: 64 * 1024)
        var buffer = ByteBuffer(string: text)
        guard case .head(let head, _, _) = try parser.next(&buffer) else {
            Issue.record("no head parsed")
            throw CancellationError()
        }
        return head
    }

    @Test("Lookups over parsed lines answer as HTTPHeaders does")
    func lookupsMatchHTTPHeaders() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<400 {
            let count = Int.random(in: 0...6, using: &generator)
            // Values without leading whitespace: the parser (like llhttp) drops it.
            let fields = (0..<count).map { _ in
                (Self.names.randomElement(using: &generator)!, Self.values.randomElement(using: &generator)!.drop { $0 == " " || $0 == "\t" })
            }.map { ($0.0, String($0.1)) }
            let headers = HTTPHeaders(fields)
            let head = try Self.parsed(fields)
            for storage in [head.headers, HeadFields(headers)] {
                #expect(storage.count == headers.count)
                #expect(storage.encodedSize == headers.encodedSize)
                #expect(storage.map { "\($0.name): \($0.value)" } == headers.map { "\($0.name): \($0.value)" })
                for name in Self.names + ["absent"] {
                    #expect(storage.first(name: name) == headers.first(name: name), "\(fields) \(name)")
                    #expect(storage.contains(name: name) == headers.contains(name: name))
                    #expect(storage[name] == headers[name])
                    #expect(storage[canonicalForm: name] == headers[canonicalForm: name], "\(fields) \(name)")
                }
                #expect(storage.httpHeaders == headers)
            }
        }
    }

    @Test("An edit decodes the lines once and leaves the parsed buffer alone")
    func editsDecode() throws {
        var head = try Self.parsed([("Host", "a"), ("Cookie", "x=1"), ("X-A", "1")])
        let before = head.headers
        head.headers.remove(name: "cookie")
        head.headers.replaceOrAdd(name: "x-a", value: "2")
        head.headers.add(name: "x-b", value: "3")
        #expect(head.headers.map { "\($0.name)=\($0.value)" } == ["Host=a", "x-a=2", "x-b=3"])
        #expect(before.map { "\($0.name)=\($0.value)" } == ["Host=a", "Cookie=x=1", "X-A=1"])
    }
}
