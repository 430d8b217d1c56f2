import NIOHTTP1
import Testing

@testable import Gateway

@Suite("Request path validation")
struct PathValidationTests {
    /// Every spelling of a dot segment some upstream decodes into `..` or `.`.
    static let dotSegments = [
        "/api/../admin", "/api/./x", "/api/..", "/api/.",
        "/api/..%2Fadmin", "/api/..%2fadmin", "/api/..%5Cadmin", "/api/..%5cadmin",
        "/api/%2e%2e%2fadmin", "/api/%2E%2E%2Fadmin", "/api/%2e%2E/admin", "/api/.%2e/admin",
        "/api/%2e./admin", "/api/%2e/admin", "/api/.%2fx", "/api/%2e%5cx",
        "/api/..;/admin", "/api/..;jsessionid=1/admin", "/api/.;/x", "/api/..%3B/admin", "/api/..%3b/admin",
        "/a/%2e%2e", "/a/%2e", "/a/..%2F", "/a/..;", "/a/.%2E?x=1",
        "/api/%252e%252e%252fadmin", "/api/..%252fadmin", "/api/%252e%252e/admin", "/api/..%255cadmin",
        "/api%2F..%2Fadmin", "/api%5C..%5Cadmin", "/..", "/%2e%2e",
    ]

    /// Refused for other reasons than dot segments.
    static let malformed = [
        "/api/..\\admin", "/a\\b", "/a%00b", "/a%zz", "/a%2", "/a%", "/a/%c0%ae%c0%ae/b", "/a/%C1%9C", "/a#x",
        "/a b", "/a%2500x%00",
    ]

    /// Forwarded unchanged: dots inside names, encoded slashes inside a segment, query strings.
    static let accepted = [
        "/api/x", "/api/..x", "/api/x..", "/api/...", "/api/x.y/z", "/api/%20", "/.well-known/x",
        "/api/a%2Fb", "/api/a%5Cb", "/api/%2F", "/api/%2e%2e%2e", "/api/.x%2F", "/api/x;..",
        "/api/x;v=1/..x", "/api/%25", "/api/%252F", "/api/x?y=../z", "/api/x?next=/a/..%2F#frag",
        "/api/%2ex", "/api/x%2e", "/",
    ]

    @Test(arguments: dotSegments)
    func dotSegmentIsRefused(_ path: String) {
        #expect(RequestValidator.pathProblem(path) == "dot segments are not allowed in the path")
    }

    @Test(arguments: malformed)
    func malformedPathIsRefused(_ path: String) {
        let problem = RequestValidator.pathProblem(path)
        #expect(problem != nil)
        #expect(problem != "dot segments are not allowed in the path")
    }

    @Test(arguments: accepted)
    func ordinaryPathIsAccepted(_ path: String) {
        #expect(RequestValidator.pathProblem(path) == nil)
    }

    /// HTTP/1.1 and HTTP/2 heads go through the same validation, so each form is a 400 before routing.
    @Test func validateRefusesEncodedDotSegmentsForEveryVersion() {
        for version in [HTTPVersion(major: 1, minor: 1), HTTPVersion(major: 2, minor: 0)] {
            for path in Self.dotSegments {
                var headers = HTTPHeaders()
                headers.add(name: "host", value: "a")
                let head = RequestHead(HTTPRequestHead(version: version, method: .GET, uri: path, headers: headers))
                guard case .failure(let error) = RequestValidator.validate(head) else {
                    Issue.record("\(path) over \(version) was accepted")
                    continue
                }
                #expect(error.status == .badRequest)
            }
        }
    }
}
