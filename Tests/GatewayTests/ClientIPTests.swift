import NIOCore
import NIOHTTP1
import Testing

@testable import Gateway

/// Each client-IP rule of issue 4 §4 on `ClientIPResolver` alone.
@Suite("Client IP")
struct ClientIPTests {
    static func network(_ text: String) -> IPNetwork { try! IPNetwork.parse(text).get() }

    let resolver = ClientIPResolver(
        trustedNetworks: [network("10.0.0.0/8"), network("2001:db8::/32"), network("127.0.0.1/32")],
        header: "CF-Connecting-IP"
    )

    func ip(_ peer: String, _ pairs: (String, String)...) -> String {
        resolver.resolve(peer: PeerAddress(text: peer), headers: HeadFields(HTTPHeaders(pairs))).ip
    }

    @Test func untrustedPeerIsTheClientWhateverItSends() {
        #expect(ip("203.0.113.7", ("CF-Connecting-IP", "1.2.3.4"), ("X-Forwarded-For", "1.2.3.4")) == "203.0.113.7")
        let identity = resolver.resolve(peer: PeerAddress(text: "203.0.113.7"), headers: [:])
        #expect(identity == ClientIdentity(ip: "203.0.113.7", peer: "203.0.113.7", peerTrusted: false))
    }

    @Test func trustedPeerHeaderFirst() {
        #expect(ip("10.1.2.3", ("cf-connecting-ip", " 198.51.100.9 "), ("X-Forwarded-For", "192.0.2.1")) == "198.51.100.9")
        #expect(ip("2001:db8::5", ("CF-Connecting-IP", "2001:DB8:0:0:1::1")) == "2001:db8::1:0:0:1")
    }

    @Test func trustedPeerRightMostUntrustedForwardedFor() {
        #expect(ip("10.1.2.3", ("X-Forwarded-For", "192.0.2.1, 198.51.100.9, 10.9.9.9")) == "198.51.100.9")
        #expect(ip("10.1.2.3", ("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", "10.0.0.7")) == "192.0.2.1")
        // Every hop trusted: the left-most.
        #expect(ip("10.1.2.3", ("X-Forwarded-For", "10.0.0.1, 10.0.0.2")) == "10.0.0.1")
        #expect(ip("10.1.2.3") == "10.1.2.3")
    }

    @Test func malformedFallsBackToThePeer() {
        for bad in ["not-an-ip", "1.2.3.4:80", "[2001:db8::1]", "01.2.3.4", "1.2.3.4 5.6.7.8", "", "256.1.1.1"] {
            #expect(ip("10.1.2.3", ("CF-Connecting-IP", bad)) == "10.1.2.3", "\(bad)")
        }
        #expect(ip("10.1.2.3", ("CF-Connecting-IP", "1.1.1.1"), ("CF-Connecting-IP", "2.2.2.2")) == "10.1.2.3")
        #expect(ip("10.1.2.3", ("X-Forwarded-For", "192.0.2.1, garbage")) == "10.1.2.3")
    }

    @Test func ipv4MappedIPv6IsIPv4() {
        #expect(PeerAddress(text: "::ffff:192.0.2.1").text == "192.0.2.1")
        #expect(PeerAddress(text: "::ffff:10.0.0.1").bytes == [10, 0, 0, 1])
        // A mapped peer inside a trusted IPv4 range is trusted.
        #expect(ip("::ffff:10.0.0.1", ("CF-Connecting-IP", "::ffff:198.51.100.9")) == "198.51.100.9")
        #expect(ip("::ffff:10.0.0.1", ("X-Forwarded-For", "::ffff:198.51.100.9")) == "198.51.100.9")
    }

    @Test func peerFromASocketAddress() throws {
        let v4 = try SocketAddress(ipAddress: "192.0.2.44", port: 443)
        #expect(PeerAddress(v4) == PeerAddress(text: "192.0.2.44"))
        let mapped = try SocketAddress(ipAddress: "::ffff:192.0.2.44", port: 443)
        #expect(PeerAddress(mapped).text == "192.0.2.44")
        #expect(PeerAddress(nil).bytes == nil)
    }

    @Test func ipv4PeersReadFromTheSocketAddressMatchTheirText() throws {
        var generator = SystemRandomNumberGenerator()
        var samples: [[UInt8]] = [[0, 0, 0, 0], [255, 255, 255, 255], [10, 0, 100, 9], [1, 20, 3, 40], [99, 100, 199, 200]]
        for _ in 0..<500 { samples.append((0..<4).map { _ in UInt8.random(in: 0...255, using: &generator) }) }
        for bytes in samples {
            let text = bytes.map { String($0) }.joined(separator: ".")
            let peer = PeerAddress(try SocketAddress(ipAddress: text, port: 443))
            #expect(peer.text == text)
            #expect(peer.bytes == bytes)
            #expect(peer == PeerAddress(text: text))
        }
    }

    @Test func rfc5952Formatting() {
        func format(_ text: String) -> String { IPAddressText.format(IPAddressText.parse(Substring(text))!) }
        #expect(format("2001:0db8:0000:0000:0000:0000:0000:0001") == "2001:db8::1")
        #expect(format("2001:db8:0:1:0:0:0:1") == "2001:db8:0:1::1")
        #expect(format("2001:db8:0:0:1:0:0:1") == "2001:db8::1:0:0:1")
        #expect(format("2001:db8:1:1:1:1:0:1") == "2001:db8:1:1:1:1:0:1")
        #expect(format("::") == "::")
        #expect(format("::1") == "::1")
    }

    @Test func cloudflarePresetExpandsToTheShippedRanges() {
        #expect(CloudflareRanges.networks.count == CloudflareRanges.ipv4.count + CloudflareRanges.ipv6.count)
        #expect(CloudflareRanges.ipv4.contains("131.0.72.0/22"))
        let cloudflare = ClientIPResolver(ClientIPConfig(trustedProxies: [.cloudflare], header: "cf-connecting-ip"))
        #expect(cloudflare.isTrusted([131, 0, 73, 10]))
        #expect(cloudflare.isTrusted([104, 16, 0, 1]))
        #expect(cloudflare.isTrusted(IPAddressText.parse("2606:4700::6810:84e5")))
        #expect(!cloudflare.isTrusted([131, 0, 76, 1]))
        #expect(!cloudflare.isTrusted([203, 0, 113, 7]))
        let identity = cloudflare.resolve(peer: PeerAddress(text: "131.0.72.9"), headers: HeadFields(HTTPHeaders([("CF-Connecting-IP", "181.1.2.3")])))
        #expect(identity == ClientIdentity(ip: "181.1.2.3", peer: "131.0.72.9", peerTrusted: true))
    }

    @Test func nothingTrustedByDefault() {
        let none = ClientIPResolver(ClientIPConfig(trustedProxies: [], header: "cf-connecting-ip"))
        #expect(!none.isTrusted([127, 0, 0, 1]))
    }
}
