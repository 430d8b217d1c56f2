import NIOHTTP1
import Testing

@testable import Gateway

/// The byte comparisons that replace lowercased `String`s and `Set<String>` probes on the request
/// path must agree with them exactly.
@Suite("Field names compared as bytes")
struct FieldNameTests {
    static let names = Array(HeaderRewriter.hopByHop) + Array(HeaderRewriter.spoofable) + Array(HeaderRewriter.gatewayOwned) + [
        "host", "content-length", "x-forwarded", "te ", "tE", "Transfer-Encoding", "TRANSFER-ENCODING", "x-request-ID",
        "proxy-connectio", "keep-alive2", "upgrade", "Upgrade", "expect", "accept", "", "\u{e9}xpect", "[onnection",
    ]

    @Test("Case-insensitive equality matches lowercased()")
    func equality() {
        for name in Self.names {
            for candidate in ["connection", "host", "x-forwarded-for", "te", "expect"] {
                #expect(name.equalsIgnoringASCIICase(candidate) == (name.lowercased() == candidate), "\(name) vs \(candidate)")
            }
            #expect(name.equalsIgnoringASCIICase("connection" as StaticString) == (name.lowercased() == "connection"))
        }
    }

    @Test("isHopByHop is membership in hopByHop, whatever the case")
    func hopByHop() {
        for name in Self.names + Self.names.map { $0.uppercased() } {
            #expect(HeaderRewriter.isHopByHop(name) == HeaderRewriter.hopByHop.contains(name.lowercased()), "\(name)")
        }
    }

    @Test("List elements match NIO's canonical form, lowercased", arguments: [
        "upgrade", "Upgrade", " keep-alive ,\tUPGRADE\t", "keep-alive", "upgrade2", "up grade", ",,upgrade,", "", " , ",
        "keep-alive, upgrade, close", "upgradeX, Xupgrade",
    ])
    func listElements(value: String) {
        let headers = HTTPHeaders([("connection", value)])
        let expected = headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
        #expect(value.containsListElement("upgrade") == expected)
    }
}
