import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Synchronization
import Testing
@testable import Gateway

/// Counts future callbacks (they may run on another thread than the test's).
final class CallCount: Sendable {
    private let value = Atomic<Int>(0)
    func bump() { self.value.add(1, ordering: .relaxed) }
    var count: Int { self.value.load(ordering: .relaxed) }
}

@Suite("Response cache: LRU, coalescing, purge")
struct ResponseCacheStoreTests {
    let loop = EmbeddedEventLoop()

    func cache(memory: Int = 1 << 20, maxObject: Int = 1 << 16) -> ResponseCache {
        var config = RouteCacheConfig()
        config.memoryBytes = memory
        config.maxObjectBytes = maxObject
        return ResponseCache(config: config, route: "r")
    }

    func request(_ cache: ResponseCache, _ uri: String, _ headers: HeadFields = [:]) -> CacheRequest {
        cache.request(method: .GET, host: "h", uri: uri, headers: headers, hasBody: false, subject: nil)!
    }

    /// Runs one fetch through a fill: head, body, end.
    func fill(_ fill: CacheFill, body: String, fields: [(String, String)] = [("cache-control", "max-age=60")]) {
        fill.responseHead(HTTPResponseHead(version: .http1_1, status: .ok, headers: HTTPHeaders(fields + [("transfer-encoding", "chunked"), ("age", "1")])),
                          requestMethod: .GET)
        fill.responseBody(ByteBuffer(string: body))
        fill.responseEnd(requestMethod: .GET)
    }

    func expectFill(_ lookup: CacheLookup, sourceLocation: SourceLocation = #_sourceLocation) -> CacheFill? {
        if case .fill(let fill) = lookup { return fill }
        Issue.record("expected a fill, got \(lookup)", sourceLocation: sourceLocation)
        return nil
    }

    func expectHit(_ lookup: CacheLookup, sourceLocation: SourceLocation = #_sourceLocation) -> (CachedResponse, Int)? {
        if case .hit(let entry, let age) = lookup { return (entry, age) }
        Issue.record("expected a hit, got \(lookup)", sourceLocation: sourceLocation)
        return nil
    }

    @Test func aStoredResponseIsServedWithItsAgeAndFraming() throws {
        let cache = cache()
        let r = request(cache, "/a?y=1&x=2")
        let first = try #require(expectFill(cache.lookup(r, coalesce: true, on: loop)))
        fill(first, body: "hello")
        let later = NIODeadline.now() + .seconds(5)
        let (entry, age) = try #require(expectHit(cache.lookup(request(cache, "/a?x=2&y=1"), coalesce: true, on: loop, now: later)))
        #expect(String(buffer: entry.body) == "hello")
        #expect(age >= 6 && age <= 7)
        #expect(entry.head.headers["content-length"] == ["5"])
        #expect(!entry.head.headers.contains(name: "transfer-encoding"))
        #expect(!entry.head.headers.contains(name: "age"))
        // Past its lifetime it is a miss again.
        _ = try #require(expectFill(cache.lookup(r, coalesce: false, on: loop, now: .now() + .seconds(61))))
    }

    @Test func concurrentMissesWaitForOneFetch() throws {
        let cache = cache()
        let r = request(cache, "/a")
        let leader = try #require(expectFill(cache.lookup(r, coalesce: true, on: loop)))
        let woken = CallCount()
        for _ in 0..<10 {
            guard case .wait(let ready) = cache.lookup(r, coalesce: true, on: loop) else {
                Issue.record("expected to wait")
                return
            }
            ready.whenSuccess { woken.bump() }
        }
        #expect(woken.count == 0)
        fill(leader, body: "x")
        #expect(woken.count == 10)
        _ = try #require(expectHit(cache.lookup(r, coalesce: true, on: loop)))
    }

    @Test func waitersAreReleasedWhenTheFetchStoresNothingOrIsDropped() throws {
        let cache = cache()
        let r = request(cache, "/a")
        var leader = expectFill(cache.lookup(r, coalesce: true, on: loop))
        guard case .wait(let first) = cache.lookup(r, coalesce: true, on: loop) else { Issue.record("expected to wait"); return }
        let released = CallCount()
        first.whenSuccess { released.bump() }
        leader?.responseHead(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["cache-control": "private, max-age=9"]),
                             requestMethod: .GET)
        #expect(released.count == 1)
        // The next fetch is dropped without an end (the client left): its waiters still go.
        leader = expectFill(cache.lookup(r, coalesce: false, on: loop))
        var second = expectFill(cache.lookup(r, coalesce: true, on: loop))
        guard case .wait(let ready) = cache.lookup(r, coalesce: true, on: loop) else { Issue.record("expected to wait"); return }
        let releasedAgain = CallCount()
        ready.whenSuccess { releasedAgain.bump() }
        #expect(second?.leader == true)
        // Dropping a fill that nobody waits on wakes nobody; dropping the leader wakes its waiters.
        leader = nil
        #expect(releasedAgain.count == 0)
        second = nil
        #expect(releasedAgain.count == 1)
        #expect(cache.usage.entries == 0)
    }

    @Test func varyKeepsOneEntryPerVariant() throws {
        let cache = cache()
        let en = request(cache, "/v", ["Accept-Language": "en"])
        let fr = request(cache, "/v", ["Accept-Language": "fr"])
        fill(try #require(expectFill(cache.lookup(en, coalesce: true, on: loop))), body: "en",
             fields: [("cache-control", "max-age=60"), ("vary", "Accept-Language")])
        fill(try #require(expectFill(cache.lookup(fr, coalesce: true, on: loop))), body: "fr",
             fields: [("cache-control", "max-age=60"), ("vary", "Accept-Language")])
        #expect(try String(buffer: #require(expectHit(cache.lookup(en, coalesce: true, on: loop))).0.body) == "en")
        #expect(try String(buffer: #require(expectHit(cache.lookup(fr, coalesce: true, on: loop))).0.body) == "fr")
        _ = expectFill(cache.lookup(request(cache, "/v", ["Accept-Language": "de"]), coalesce: true, on: loop))
    }

    @Test func objectsOverTheCapPassThroughAndTheBudgetEvictsLeastRecentlyUsed() throws {
        let small = cache(memory: 4096, maxObject: 1024)
        fill(try #require(expectFill(small.lookup(request(small, "/big"), coalesce: true, on: loop))),
             body: String(repeating: "b", count: 1025))
        #expect(small.usage.entries == 0)
        for path in ["/1", "/2", "/3"] {
            fill(try #require(expectFill(small.lookup(request(small, path), coalesce: true, on: loop))),
                 body: String(repeating: "x", count: 1000))
        }
        // Touch /1 so /2 is the least recently used.
        _ = expectHit(small.lookup(request(small, "/1"), coalesce: true, on: loop))
        fill(try #require(expectFill(small.lookup(request(small, "/4"), coalesce: true, on: loop))),
             body: String(repeating: "x", count: 1000))
        #expect(small.usage.entries == 3)
        #expect(small.usage.bytes <= 4096)
        _ = expectHit(small.lookup(request(small, "/1"), coalesce: true, on: loop))
        _ = expectFill(small.lookup(request(small, "/2"), coalesce: false, on: loop))
    }

    @Test func purgeDropsByPathPrefix() throws {
        let cache = cache()
        for path in ["/api/barbers", "/api/barbers/1?x=1", "/api/bookings"] {
            fill(try #require(expectFill(cache.lookup(request(cache, path), coalesce: true, on: loop))), body: path)
        }
        #expect(cache.purge(pathPrefix: "/api/barbers") == 2)
        #expect(cache.usage.entries == 1)
        _ = expectHit(cache.lookup(request(cache, "/api/bookings"), coalesce: true, on: loop))
        #expect(cache.purge(pathPrefix: "/") == 1)
        #expect(cache.usage.entries == 0 && cache.usage.bytes == 0)
    }

    @Test func redisValuesRoundTripBinaryBodiesAndAgeByTheWallClock() throws {
        var body = ByteBuffer()
        body.writeBytes([0, 0xFF, 0xC3, 0x28, 10, 13])
        let storedAt = NIODeadline.now() - .seconds(3)
        let entry = CachedResponse(
            head: HTTPResponseHead(version: .http1_1, status: .notFound, headers: ["content-length": "6", "x-a": "é"]),
            body: body,
            freshness: CachePolicy.Freshness(lifetime: 60, initialAge: 2, staleWhileRevalidate: 5, staleIfError: 7, vary: ["accept"]),
            storedAt: storedAt
        )
        let wall = Date(timeIntervalSince1970: 1_800_000_000)
        let value = SharedCacheStore.encode(entry, wallClock: wall)
        // Another instance, ten seconds later by the wall clock.
        let later = NIODeadline.now()
        let decoded = try #require(SharedCacheStore.decode(base64: Array(value.utf8), wallClock: wall + 10, now: later))
        #expect(decoded.head.status == .notFound)
        #expect(decoded.head.headers["x-a"] == ["é"])
        #expect(decoded.body == body)
        #expect(decoded.freshness == entry.freshness)
        let age = decoded.age(now: later)
        #expect(age >= 14 && age <= 16)
        #expect(SharedCacheStore.decode(base64: Array("bm9wZQ==".utf8)) == nil)
        #expect(SharedCacheStore.decode(base64: Array(value.dropLast(8).utf8)) == nil)
    }

    @Test func staleWhileRevalidateServesTheOldEntryWithOneRefresh() throws {
        let cache = cache()
        let r = request(cache, "/s")
        fill(try #require(expectFill(cache.lookup(r, coalesce: true, on: loop))), body: "old",
             fields: [("cache-control", "max-age=10, stale-while-revalidate=20")])
        let later = NIODeadline.now() + .seconds(15)
        guard case .stale(let entry, let age, let refresh?) = cache.lookup(r, coalesce: true, on: loop, now: later) else {
            Issue.record("expected stale with a refresh")
            return
        }
        #expect(String(buffer: entry.body) == "old" && age >= 16)
        // While the refresh runs, others get the stale entry without a second refresh.
        guard case .stale(_, _, nil) = cache.lookup(r, coalesce: true, on: loop, now: later) else {
            Issue.record("expected stale without a refresh")
            return
        }
        fill(refresh, body: "new", fields: [("cache-control", "max-age=10, stale-while-revalidate=20")])
        #expect(try String(buffer: #require(expectHit(cache.lookup(r, coalesce: true, on: loop))).0.body) == "new")
        // Past both windows it is a plain miss.
        _ = expectFill(cache.lookup(r, coalesce: true, on: loop, now: .now() + .seconds(31)))
    }

    @Test func staleIfErrorHandsTheExpiredEntryToTheFetch() throws {
        let cache = cache()
        let r = request(cache, "/e")
        fill(try #require(expectFill(cache.lookup(r, coalesce: true, on: loop))), body: "kept",
             fields: [("cache-control", "max-age=10, stale-if-error=60")])
        let refetch = try #require(expectFill(cache.lookup(r, coalesce: true, on: loop, now: .now() + .seconds(30))))
        let fallback = try #require(refetch.takeStaleFallback())
        #expect(String(buffer: fallback.body) == "kept")
        #expect(refetch.takeStaleFallback() == nil)
        let tooLate = try #require(expectFill(cache.lookup(r, coalesce: true, on: loop, now: .now() + .seconds(71))))
        #expect(tooLate.staleFallback == nil)
    }
}
