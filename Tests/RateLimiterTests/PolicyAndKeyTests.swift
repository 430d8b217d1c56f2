import Testing
@testable import RateLimiter

@Suite struct MultiPolicyTests {
    let perIP = spec("per_ip", 100, 900)
    let login = spec("login", 5, 60, .slidingLog)

    @Test func allOrNothing() {
        var table = RateLimitTable()
        let reqs: [(PolicySpec, key: String)] = [(login, "k:login"), (perIP, "k:ip")]
        for i in 0..<5 {
            let d = table.check(policies: reqs, now: 1000 + Int64(i))
            #expect(d.allowed && d.decisions.allSatisfy { $0.counted })
        }
        #expect(table.check(policies: [(perIP, "k:ip")], now: 2000).decisions[0].decision.remaining == 94)
        let denied = table.check(policies: reqs, now: 3000)
        #expect(!denied.allowed)
        #expect(denied.decisions.allSatisfy { !$0.counted })
        #expect(denied.decisions[1].decision.allowed && denied.decisions[1].decision.remaining == 94)
        // per_ip was not consumed by the denied login attempt.
        #expect(table.check(policies: [(perIP, "k:ip")], now: 4000).decisions[0].decision.remaining == 93)
        #expect(denied.tightest?.policy.name == "login")
        #expect(denied.retryAfter == 58)  // first login at 1000 ms ages out at 61_000
    }

    @Test func shadowCountsButNeverDenies() {
        var table = RateLimitTable()
        let shadow = spec("shadow", 2, 60, .slidingLog, shadow: true)
        var results: [MultiDecision] = []
        for i in 0..<5 { results.append(table.check(policies: [(shadow, "s"), (perIP, "ip")], now: Int64(i))) }
        #expect(results.allSatisfy { $0.allowed })
        #expect(results.map { $0.decisions[0].decision.allowed } == [true, true, false, false, false])
        #expect(results.map { $0.decisions[0].counted } == [true, true, false, false, false])
        #expect(results.map { $0.decisions[0].decision.remaining } == [1, 0, 0, 0, 0])
        #expect(results[4].decisions[1].decision.remaining == 95)  // the enforced policy counted all 5
        #expect(results.allSatisfy { $0.tightest?.policy.name == "per_ip" })  // shadow never in headers
        #expect(results[4].retryAfter == nil)
    }

    @Test func tightestSelection() {
        var table = RateLimitTable()
        let a = spec("a", 10, 60), b = spec("b", 5, 60), c = spec("c", 8, 60)
        // a: 10 → 9 left; b: 5 → 4 left; c: 8 → 7 left → b has the fewest remaining.
        #expect(table.check(policies: [(a, "a"), (b, "b"), (c, "c")], now: 0).tightest?.policy.name == "b")
        // Tie on remaining: a used 7 more (2 left), c used 5 more (2 left) → smaller limit c wins.
        for _ in 0..<7 { _ = table.check(policies: [(a, "a")], now: 0) }
        for _ in 0..<5 { _ = table.check(policies: [(c, "c")], now: 0) }
        let tie = table.check(policies: [(a, "a"), (c, "c")], now: 0)
        #expect(tie.decisions.map(\.decision.remaining) == [1, 1])
        #expect(tie.tightest?.policy.name == "c")
        // Denied: among the denying policies, the longest wait wins.
        var t2 = RateLimitTable()
        let short = spec("short", 1, 10, .slidingLog), long = spec("long", 1, 100, .slidingLog)
        _ = t2.check(policies: [(short, "s"), (long, "l")], now: 0)
        let d = t2.check(policies: [(short, "s"), (long, "l")], now: 1000)
        #expect(!d.allowed && d.tightest?.policy.name == "long" && d.retryAfter == 99)
    }
}

@Suite struct KeyTests {
    let p = spec("per_ip", 100, 900)

    @Test func ipv6PrefixSharesKeyWithinSlash64() throws {
        let a = try #require(RateLimitKey.make(policy: p, parts: [.clientIP("2001:db8:1:2::1")]))
        let b = try #require(RateLimitKey.make(policy: p, parts: [.clientIP("2001:DB8:1:2:ffff:eeee:dddd:9")]))
        let c = try #require(RateLimitKey.make(policy: p, parts: [.clientIP("2001:db8:1:3::1")]))
        #expect(a == b)
        #expect(a != c)
        #expect(a == "gw:rl:{ip:2001:db8:1:2::/64}:per_ip")
        var p48 = p
        p48.ipv6Prefix = 48
        #expect(RateLimitKey.make(policy: p48, parts: [.clientIP("2001:db8:1:3::1")])
                == RateLimitKey.make(policy: p48, parts: [.clientIP("2001:db8:1:2::1")]))
        var p128 = p
        p128.ipv6Prefix = 128
        #expect(RateLimitKey.make(policy: p128, parts: [.clientIP("[fe80::1%eth0]")]) == "gw:rl:{ip:fe80::1/128}:per_ip")
    }

    @Test func ipv4MappedBecomesIPv4() {
        let v4 = RateLimitKey.make(policy: p, parts: [.clientIP("203.0.113.7")])
        #expect(v4 == "gw:rl:{ip:203.0.113.7}:per_ip")
        #expect(RateLimitKey.make(policy: p, parts: [.clientIP("::ffff:203.0.113.7")]) == v4)
        #expect(RateLimitKey.make(policy: p, parts: [.clientIP("::FFFF:cb00:7107")]) == v4)
        #expect(RateLimitKey.make(policy: p, parts: [.clientIP("203.0.113.256")]) == nil)
        #expect(RateLimitKey.make(policy: p, parts: [.clientIP("not-an-ip")]) == nil)
    }

    @Test func partsAndEscaping() {
        let k = RateLimitKey.make(policy: p, parts: [.route("login"), .jwtSubject("user@x.com:{1}")])
        #expect(k == "gw:rl:{sub:user%40x.com%3A%7B1%7D}:per_ip:route:login")
        #expect(RateLimitKey.make(policy: p, parts: [.header("X-Api-Key", "abc")]) == "gw:rl:{h:x-api-key:abc}:per_ip")
        #expect(RateLimitKey.make(policy: p, parts: []) == "gw:rl:{global}:per_ip")
        #expect(RateLimitKey.hashTag(of: k!) == "sub:user%40x.com%3A%7B1%7D")
        #expect(KeyPartKind(configValue: "header:X-Api-Key") == .header("x-api-key"))
        #expect(KeyPartKind(configValue: "client_ip") == .clientIP)
        #expect(KeyPartKind(configValue: "header:") == nil)
        #expect(KeyPartKind(configValue: "claim:realm_access.plan") == .claim("realm_access.plan"))
        #expect(KeyPartKind(configValue: "claim:") == nil)
        // claim:sub keys exactly like jwt_subject, so switching between them keeps the counts.
        #expect(RateLimitKey.make(policy: p, parts: [.claim("sub", "u-1")]) == RateLimitKey.make(policy: p, parts: [.jwtSubject("u-1")]))
        #expect(RateLimitKey.make(policy: p, parts: [.claim("org.id", "a:b")]) == "gw:rl:{c:org.id:a%3Ab}:per_ip")
        // The tier follows the policy name and never becomes the hash tag.
        #expect(RateLimitKey.make(policy: p, parts: [.tier("pro"), .claim("sub", "u-1")]) == "gw:rl:{sub:u-1}:per_ip:tier:pro")
        #expect(RateLimitKey.make(policy: p, parts: [.clientIP("203.0.113.7"), .header("x-shop-id", "s1")])
            == "gw:rl:{ip:203.0.113.7}:per_ip:h:x-shop-id:s1")
        // Same client, different policies → same hash tag (same Redis Cluster slot, same shard).
        let login = RateLimitKey.make(policy: spec("login", 5, 60), parts: [.clientIP("203.0.113.7")])!
        let perIP = RateLimitKey.make(policy: p, parts: [.clientIP("203.0.113.7")])!
        #expect(RateLimitKey.hashTag(of: login) == RateLimitKey.hashTag(of: perIP))
        // Redis Cluster's rule: the first `{`, the first `}` after it, a non-empty text between.
        #expect(RateLimitKey.hashTag(of: "a{}b{c}") == "a{}b{c}")
        #expect(RateLimitKey.hashTag(of: "a{b}c}") == "b")
        #expect(RateLimitKey.hashTag(of: "{b") == "{b")
        #expect(RateLimitKey.hashTag(of: "x{\u{e9}}y") == "\u{e9}")
    }
}

@Suite struct HeaderTests {
    @Test func draft6AndDraft10() {
        var table = RateLimitTable()
        let perIP = spec("per_ip", 100, 900)
        var d = table.check(policies: [(perIP, "k")], now: 0)
        let h6 = RateLimitHeaders.fields(for: d, style: .draft6)
        #expect(h6.map(\.0) == ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy"])
        #expect(h6.map(\.1) == ["100", "99", "1800", "100;w=900"])
        let h10 = RateLimitHeaders.fields(for: d, style: .ietfDraft10)
        #expect(h10.map(\.0) == ["RateLimit", "RateLimit-Policy"])
        #expect(h10.map(\.1) == ["\"per_ip\";r=99;t=1800", "\"per_ip\";q=100;w=900"])

        let login = spec("login", 5, 60, .slidingLog)
        for i in 0..<5 { _ = table.check(policies: [(login, "l")], now: Int64(i) * 1000) }
        d = table.check(policies: [(login, "l"), (perIP, "k")], now: 10_500)
        let denied6 = RateLimitHeaders.fields(for: d, style: .draft6)
        #expect(denied6.map(\.1) == ["5", "0", "50", "5;w=60", "50"])
        #expect(denied6.last?.0 == "Retry-After")
        let denied10 = RateLimitHeaders.fields(for: d, style: .ietfDraft10)
        #expect(denied10.map(\.1) == ["\"login\";r=0;t=50", "\"login\";q=5;w=60", "50"])
        #expect(RateLimitHeaders.fields(for: d, style: .draft6, lowercaseNames: true).map(\.0)
                == ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy", "retry-after"])
        #expect(RateLimitHeaders.fields(for: d, style: .ietfDraft10, lowercaseNames: true).map(\.0) == ["ratelimit", "ratelimit-policy", "retry-after"])
        #expect(RateLimitHeaders.sfString("a\"b\\c") == "\"a\\\"b\\\\c\"")
    }

    /// The list-free forms of `make` give the keys the general one does.
    @Test func oneOrTwoPartKeysMatchTheGeneralForm() {
        let p = spec("per_ip", 100, 900)
        let firsts: [KeyPart] = [.clientIP("203.0.113.7"), .clientIP("2001:db8::1"), .jwtSubject("u 1"), .claim("org.id", "acme"),
                                 .header("X-Shop", "s/1"), .route("bookings"), .clientIP("not an address")]
        // Two parts: against the general form (which a list of two takes).
        for first in firsts {
            #expect(RateLimitKey.make(policy: p, part: first, then: .tier("pro")) == RateLimitKey.make(policy: p, parts: [first, .tier("pro")]))
        }
        // One part: the keys the general form gave before it delegated here (`{tag}:policy`).
        #expect(RateLimitKey.make(policy: p, part: .clientIP("203.0.113.7")) == "gw:rl:{ip:203.0.113.7}:per_ip")
        #expect(RateLimitKey.make(policy: p, part: .jwtSubject("u 1")) == "gw:rl:{sub:u%201}:per_ip")
        #expect(RateLimitKey.make(policy: p, part: .route("bookings")) == "gw:rl:{route:bookings}:per_ip")
        #expect(RateLimitKey.make(policy: p, part: .clientIP("not an address")) == nil)
        #expect(RateLimitKey.make(policy: p, part: .clientIP("10.0.0.1"), then: .tier("pro")) == "gw:rl:{ip:10.0.0.1}:per_ip:tier:pro")
    }

    /// The IPv4 shortcut in key building agrees with `inet_pton` + `clientIdentity`: whatever it
    /// takes is an address that prints back as itself.
    @Test func canonicalIPv4ShortcutAgreesWithInetPton() {
        let texts = ["203.0.113.7", "0.0.0.0", "255.255.255.255", "1.2.3.4", "10.0.0.10", "256.1.1.1", "01.2.3.4",
                     "1.2.3", "1.2.3.4.5", "1..3.4", ".1.2.3", "1.2.3.", "1.2.3.4 ", " 1.2.3.4", "1.2.3.04", "1.2.3.00",
                     "a.b.c.d", "::1", "::ffff:1.2.3.4", "[1.2.3.4]", "1.2.3.4%eth0", "", "1.2.3.1000", "99.99.99.99"]
        var rng = SplitMix64(seed: 3)
        // Three to five dot-separated runs of zero to three digits, some of them over 255.
        let random = (0..<5000).map { _ in
            (0..<(3 + Int(rng.next() % 3))).map { _ in
                String((0..<Int(rng.next() % 4)).map { _ in Character(String(rng.next() % 10)) })
            }.joined(separator: ".")
        }
        var taken = 0
        for text in texts + random where IPAddress.isCanonicalIPv4(text) {
            taken += 1
            guard case .v4 = IPAddress(parsing: text) else {
                Issue.record("\(text) taken but not IPv4 to inet_pton")
                continue
            }
            #expect(IPAddress(parsing: text)?.clientIdentity(ipv6Prefix: 64) == text)
        }
        for text in ["203.0.113.7", "0.0.0.0", "255.255.255.255", "10.0.0.10"] { #expect(IPAddress.isCanonicalIPv4(text)) }
        for text in ["01.2.3.4", "1.2.3.04", "256.1.1.1", "1.2.3", "1.2.3.4 ", "[1.2.3.4]", "::1"] { #expect(!IPAddress.isCanonicalIPv4(text)) }
        #expect(taken > 50)
    }
}
