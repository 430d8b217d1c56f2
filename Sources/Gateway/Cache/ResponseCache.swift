import NIOCore
import NIOHTTP1
import Synchronization

/// A stored response: the upstream's head (framed by `Content-Length`, no `Age`) and its body.
struct CachedResponse: Sendable {
    var head: HTTPResponseHead
    var body: ByteBuffer
    var freshness: CachePolicy.Freshness
    var storedAt: NIODeadline

    /// Head and body bytes, what the LRU budget counts.
    var size: Int {
        var size = self.body.readableBytes + 64
        for (name, value) in self.head.headers { size += name.utf8.count + value.utf8.count + 4 }
        return size
    }

    func age(now: NIODeadline) -> Int {
        self.freshness.initialAge + Int((now - self.storedAt).nanoseconds / 1_000_000_000)
    }
}

/// What a lookup found.
enum CacheLookup {
    /// Fresh: serve it.
    case hit(CachedResponse, age: Int)
    /// Past its lifetime but within `stale-while-revalidate`: serve it, and when `refresh` is
    /// set, fetch a fresh copy in the background through it.
    case stale(CachedResponse, age: Int, refresh: CacheFill?)
    /// This request fetches from the upstream and fills the entry for everyone (`CacheFill`).
    case fill(CacheFill)
    /// Another request of this instance is fetching the same key: wait for it, then look again.
    case wait(EventLoopFuture<Void>)
}

/// A route's response cache: an LRU of entries within a byte budget, the `Vary` field names
/// learnt per key, and the fetches in flight (request coalescing). Shared by every event loop.
final class ResponseCache: Sendable {
    let config: RouteCacheConfig
    let route: String
    let metrics: GatewayMetrics?
    /// Redis behind the LRU (`store: redis`).
    let shared: SharedCacheStore?
    private let state: Mutex<State>

    init(config: RouteCacheConfig, route: String, metrics: GatewayMetrics? = nil, shared: SharedCacheStore? = nil) {
        self.config = config
        self.route = route
        self.metrics = metrics
        self.shared = shared
        self.state = Mutex(State(budget: config.memoryBytes))
    }

    /// With `store: redis`, entries also go to the `redis` section's server (single, Sentinel or Cluster) (no event loop group: a
    /// `gateway validate` run, which opens no connection).
    convenience init(
        config: RouteCacheConfig, route: String, metrics: GatewayMetrics?, redis: RedisConfig, group: EventLoopGroup?,
        stores: ResponseCacheStores
    ) {
        var shared: SharedCacheStore? = nil
        if config.store == .redis, redis.isEnabled, let group {
            shared = SharedCacheStore(client: stores.client(redis, group: group), timeout: .init(redis.timeout), route: route)
        }
        self.init(config: config, route: route, metrics: metrics, shared: shared)
    }

    /// A cacheable request on this route, or nil when the request must bypass the cache.
    func request(
        method: HTTPMethod, host: String?, uri: String, headers: HeadFields, hasBody: Bool, subject: String?
    ) -> CacheRequest? {
        guard let key = CachePolicy.baseKey(
            method: method, host: host, uri: uri, headers: headers, hasBody: hasBody,
            keyBy: self.config.keyBy, subject: subject
        ) else { return nil }
        return CacheRequest(cache: self, baseKey: key, headers: headers)
    }

    /// - Parameter coalesce: false for a request that already waited once (it goes upstream
    ///   itself instead of queueing behind another fetch).
    func lookup(_ request: CacheRequest, coalesce: Bool, on eventLoop: EventLoop, now: NIODeadline = .now()) -> CacheLookup {
        let result: CacheLookup = self.state.withLock { state in
            let vary = state.varyNames[request.baseKey] ?? []
            let key = request.baseKey + CachePolicy.varyPart(vary, request: request.headers)
            var fallback: CachedResponse? = nil
            if let entry = state.get(key) {
                let age = entry.age(now: now)
                let lifetime = entry.freshness.lifetime
                if age < lifetime { return .hit(entry, age: age) }
                if age < lifetime + entry.freshness.staleWhileRevalidate {
                    // One background refresh per key at a time.
                    guard state.inFlight[request.baseKey] == nil else { return .stale(entry, age: age, refresh: nil) }
                    state.inFlight[request.baseKey] = []
                    return .stale(entry, age: age, refresh: CacheFill(request: request, leader: true))
                }
                if age < lifetime + entry.freshness.staleIfError { fallback = entry }
            }
            if coalesce, state.inFlight[request.baseKey] != nil {
                let promise = eventLoop.makePromise(of: Void.self)
                state.inFlight[request.baseKey]!.append(promise)
                return .wait(promise.futureResult)
            }
            if coalesce { state.inFlight[request.baseKey] = [] }
            let fill = CacheFill(request: request, leader: coalesce)
            fill.staleFallback = fallback
            return .fill(fill)
        }
        switch result {
        case .hit(let entry, _):
            self.metrics?.cacheRequests.increment([self.route, "hit"])
            self.metrics?.cacheServedBytes.increment([self.route], by: Double(entry.body.readableBytes))
        case .stale(let entry, _, _):
            self.metrics?.cacheRequests.increment([self.route, "stale"])
            self.metrics?.cacheServedBytes.increment([self.route], by: Double(entry.body.readableBytes))
        case .fill where self.shared == nil: self.metrics?.cacheRequests.increment([self.route, "miss"])
        case .fill, .wait: break
        }
        return result
    }

    /// A local miss with `store: redis`: Redis's entry (kept locally too, and given to the
    /// requests waiting on `fill`), or nil to go upstream.
    func loadShared(_ fill: CacheFill, from shared: SharedCacheStore, on eventLoop: EventLoop) -> EventLoopFuture<(CachedResponse, Int)?> {
        shared.load(fill.request, on: eventLoop).map { entry in
            let now = NIODeadline.now()
            guard let entry, entry.age(now: now) < entry.freshness.lifetime else {
                if let entry, entry.age(now: now) < entry.freshness.lifetime + entry.freshness.staleIfError {
                    fill.staleFallback = fill.staleFallback ?? entry
                }
                self.metrics?.cacheRequests.increment([self.route, "miss"])
                return nil
            }
            self.metrics?.cacheRequests.increment([self.route, "hit"])
            self.metrics?.cacheServedBytes.increment([self.route], by: Double(entry.body.readableBytes))
            fill.adopt(entry)
            return (entry, entry.age(now: now))
        }
    }

    /// Stores a complete response (nil: the fetch produced nothing storable) and wakes the
    /// requests that waited for it. `fromUpstream` entries also go to Redis.
    fileprivate func finish(_ fill: CacheFill, storing entry: CachedResponse?, fromUpstream: Bool) {
        var key = fill.request.baseKey
        let waiters: [EventLoopPromise<Void>] = self.state.withLock { state in
            if let entry {
                state.varyNames[fill.request.baseKey] = entry.freshness.vary.isEmpty ? nil : entry.freshness.vary
                key += CachePolicy.varyPart(entry.freshness.vary, request: fill.request.headers)
                state.put(key, entry)
            }
            guard fill.leader else { return [] }
            return state.inFlight.removeValue(forKey: fill.request.baseKey) ?? []
        }
        if let entry, fromUpstream {
            self.metrics?.cacheStores.increment([self.route])
            self.shared?.store(entry, baseKey: fill.request.baseKey, key: key)
        }
        for waiter in waiters { waiter.succeed() }
    }

    /// Drops every entry whose path starts with `prefix`; returns how many went.
    func purge(pathPrefix prefix: String) -> Int {
        self.shared?.purge(pathPrefix: prefix)
        return self.state.withLock { state in
            let doomed = state.index.keys.filter { CachePolicy.path(ofKey: $0).hasPrefix(prefix) }
            for key in doomed { state.remove(key) }
            if prefix == "/" || prefix.isEmpty { state.varyNames.removeAll() }
            return doomed.count
        }
    }

    /// Entry count and bytes held (tests, metrics).
    var usage: (entries: Int, bytes: Int) {
        self.state.withLock { ($0.index.count, $0.bytes) }
    }

    /// LRU over a doubly linked list threaded through `nodes` (indices, no per-entry objects).
    private struct State {
        struct Node {
            var key: String
            var entry: CachedResponse
            var size: Int
            var previous: Int
            var next: Int
        }
        let budget: Int
        var nodes: [Node] = []
        var free: [Int] = []
        var index: [String: Int] = [:]
        /// Most recently used end, least recently used end (-1: empty).
        var head = -1
        var tail = -1
        var bytes = 0
        var varyNames: [String: [String]] = [:]
        var inFlight: [String: [EventLoopPromise<Void>]] = [:]

        init(budget: Int) { self.budget = budget }

        mutating func get(_ key: String) -> CachedResponse? {
            guard let slot = self.index[key] else { return nil }
            self.unlink(slot)
            self.linkFront(slot)
            return self.nodes[slot].entry
        }

        mutating func put(_ key: String, _ entry: CachedResponse) {
            self.remove(key)
            let size = entry.size
            guard size <= self.budget else { return }
            while self.bytes + size > self.budget, self.tail >= 0 { self.remove(self.nodes[self.tail].key) }
            let node = Node(key: key, entry: entry, size: size, previous: -1, next: -1)
            let slot: Int
            if let reused = self.free.popLast() {
                self.nodes[reused] = node
                slot = reused
            } else {
                self.nodes.append(node)
                slot = self.nodes.count - 1
            }
            self.index[key] = slot
            self.bytes += size
            self.linkFront(slot)
        }

        mutating func remove(_ key: String) {
            guard let slot = self.index.removeValue(forKey: key) else { return }
            self.unlink(slot)
            self.bytes -= self.nodes[slot].size
            // Release the body's storage; the slot is reused.
            self.nodes[slot].entry.body = ByteBuffer()
            self.free.append(slot)
        }

        private mutating func unlink(_ slot: Int) {
            let (previous, next) = (self.nodes[slot].previous, self.nodes[slot].next)
            if previous >= 0 { self.nodes[previous].next = next } else { self.head = next }
            if next >= 0 { self.nodes[next].previous = previous } else { self.tail = previous }
            self.nodes[slot].previous = -1
            self.nodes[slot].next = -1
        }

        private mutating func linkFront(_ slot: Int) {
            self.nodes[slot].next = self.head
            self.nodes[slot].previous = -1
            if self.head >= 0 { self.nodes[self.head].previous = slot }
            self.head = slot
            if self.tail < 0 { self.tail = slot }
        }
    }
}

/// A request that may be answered from a route's cache: the cache, its key before `Vary`, and
/// the request fields a stored response may vary on.
struct CacheRequest {
    let cache: ResponseCache
    let baseKey: String
    let headers: HeadFields
}

/// Collects one upstream response as it streams to the client and stores it at its end if it is
/// storable and within `max_object_bytes`. Used on the exchange's event loop only. Whatever
/// happens to the exchange, the requests coalesced behind this fetch are woken: at the end, when
/// the head shows nothing will be stored, or when the fill is dropped.
final class CacheFill {
    let request: CacheRequest
    /// Whether requests wait for this fetch (a request that already waited once fills alone).
    let leader: Bool
    /// An expired entry still within `stale-if-error`: the answer when the upstream fails or
    /// answers 5xx.
    var staleFallback: CachedResponse?
    private var head: HTTPResponseHead?
    private var freshness: CachePolicy.Freshness?
    private var body: ByteBuffer?
    private var done = false

    init(request: CacheRequest, leader: Bool) {
        self.request = request
        self.leader = leader
    }

    deinit { self.finish(storing: nil, fromUpstream: false) }

    func responseHead(_ head: HTTPResponseHead, requestMethod: HTTPMethod) {
        guard !self.done else { return }
        guard let freshness = CachePolicy.freshness(status: head.status.code, headers: head.headers) else {
            self.finish(storing: nil, fromUpstream: false)
            return
        }
        if let length = head.headers.first(name: "content-length").flatMap(Int.init),
            requestMethod != .HEAD, length > self.request.cache.config.maxObjectBytes
        {
            self.finish(storing: nil, fromUpstream: false)
            return
        }
        self.head = head
        self.freshness = freshness
    }

    func responseBody(_ part: ByteBuffer) {
        guard !self.done, self.head != nil else { return }
        if (self.body?.readableBytes ?? 0) + part.readableBytes > self.request.cache.config.maxObjectBytes {
            self.finish(storing: nil, fromUpstream: false)
            return
        }
        if self.body == nil {
            self.body = part
        } else {
            var part = part
            self.body!.writeBuffer(&part)
        }
    }

    func responseEnd(requestMethod: HTTPMethod) {
        guard !self.done, var head = self.head, let freshness = self.freshness else {
            self.finish(storing: nil, fromUpstream: false)
            return
        }
        let body = self.body ?? ByteBuffer()
        head.headers.remove(name: "age")
        if requestMethod != .HEAD {
            head.headers.remove(name: "transfer-encoding")
            head.headers.replaceOrAdd(name: "content-length", value: String(body.readableBytes))
        }
        self.finish(storing: CachedResponse(head: head, body: body, freshness: freshness, storedAt: .now()), fromUpstream: true)
    }

    /// The entry came from Redis: kept locally and handed to the waiters, not written back.
    func adopt(_ entry: CachedResponse) { self.finish(storing: entry, fromUpstream: false) }

    /// The fetch failed or was cut short: nothing is stored, waiters are released.
    func abandon() { self.finish(storing: nil, fromUpstream: false) }

    /// Takes the `stale-if-error` answer (once) and ends the fill.
    func takeStaleFallback() -> CachedResponse? {
        guard let entry = self.staleFallback else { return nil }
        self.staleFallback = nil
        self.abandon()
        return entry
    }

    private func finish(storing entry: CachedResponse?, fromUpstream: Bool) {
        guard !self.done else { return }
        self.done = true
        self.head = nil
        self.body = nil
        self.request.cache.finish(self, storing: entry, fromUpstream: fromUpstream)
    }
}
