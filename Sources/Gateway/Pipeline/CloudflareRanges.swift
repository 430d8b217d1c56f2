/// Cloudflare's published edge ranges, for `client_ip.trusted_proxies: [cloudflare]`.
///
/// As known on 2026-11-26, verify against https://www.cloudflare.com/ips/ (the lists at
/// https://www.cloudflare.com/ips-v4 and https://www.cloudflare.com/ips-v6). Cloudflare changes
/// them rarely but does change them: a range missing here makes its visitors appear as the
/// Cloudflare address (one shared rate-limit bucket), so re-check this list when upgrading.
/// 131.0.72.0/22 is the range serving Latin America.
enum CloudflareRanges {
    static let takenOn = "2026-11-26"

    static let ipv4 = [
        "173.245.48.0/20",
        "103.21.244.0/22",
        "103.22.200.0/22",
        "103.31.4.0/22",
        "141.101.64.0/18",
        "108.162.192.0/18",
        "190.93.240.0/20",
        "188.114.96.0/20",
        "197.234.240.0/22",
        "198.41.128.0/17",
        "162.158.0.0/15",
        "104.16.0.0/13",
        "104.24.0.0/14",
        "172.64.0.0/13",
        "131.0.72.0/22",
    ]

    static let ipv6 = [
        "2400:cb00::/32",
        "2606:4700::/32",
        "2803:f800::/32",
        "2405:b500::/32",
        "2405:8100::/32",
        "2a06:98c0::/29",
        "2c0f:f248::/32",
    ]

    /// Parsed once; a typo in the lists above fails the unit test that parses every entry.
    static let networks: [IPNetwork] = (ipv4 + ipv6).compactMap { try? IPNetwork.parse($0).get() }
}
