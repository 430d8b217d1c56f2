import NIOCore
import Testing

@testable import Gateway

@Suite("Upstream selection, ejection and retry budget")
struct UpstreamSelectionTests {
    func cluster(_ n: Int, _ configure: (inout UpstreamSettings) -> Void = { _ in }) -> UpstreamCluster {
        var settings = UpstreamSettings(connectTimeout: .seconds(1), responseTimeout: .seconds(1), maxConnections: 10, idleTimeout: .seconds(4))
        configure(&settings)
        return UpstreamCluster(name: "u", endpoints: (0..<n).map { UpstreamEndpoint(host: "127.0.0.1", port: 1000 + $0) }, settings: settings)
    }

    @Test func roundRobinRotatesAndSkipsDownEndpoints() {
        let c = cluster(3)
        let firsts = (0..<6).map { _ in c.candidates(now: .now()).first!.port }
        #expect(Set(firsts) == [1000, 1001, 1002])
        c.endpoints[1].recordFailure(now: .now())
        for _ in 0..<6 { #expect(!c.candidates(now: .now()).contains { $0.port == 1001 }) }
        c.endpoints[0].activeHealthy.store(false, ordering: .relaxed)
        c.endpoints[2].recordFailure(now: .now())
        #expect(c.candidates(now: .now()).isEmpty)
    }

    @Test func leastOutstandingPicksTheIdlest() {
        let c = cluster(3) { $0.loadBalancing = .leastOutstanding }
        c.endpoints[0].outstanding.store(5, ordering: .relaxed)
        c.endpoints[1].outstanding.store(1, ordering: .relaxed)
        c.endpoints[2].outstanding.store(3, ordering: .relaxed)
        for _ in 0..<5 { #expect(c.candidates(now: .now()).map(\.port) == [1001, 1002, 1000]) }
    }

    @Test func consecutive5xxEjectAndSuccessResets() {
        let endpoint = UpstreamEndpoint(host: "127.0.0.1", port: 1)
        let now = NIODeadline.now()
        endpoint.record5xx(threshold: 3, base: .seconds(10), now: now)
        endpoint.recordResponseOK()
        endpoint.record5xx(threshold: 3, base: .seconds(10), now: now)
        endpoint.record5xx(threshold: 3, base: .seconds(10), now: now)
        #expect(endpoint.isUp(now: now))
        endpoint.record5xx(threshold: 3, base: .seconds(10), now: now)
        #expect(!endpoint.isUp(now: now + .seconds(9)))
        #expect(endpoint.isUp(now: now + .seconds(11)))
    }

    @Test func retryBudgetIsAPercentageOfRequests() {
        let c = cluster(2) { $0.retryBudgetPercent = 20 }
        // Drain the initial bank of 10 retries.
        var banked = 0
        while c.takeRetry() { banked += 1 }
        #expect(banked == 10)
        var retries = 0
        for _ in 0..<1000 {
            c.requestStarted()
            if c.takeRetry() { retries += 1 }
        }
        #expect(retries == 200)
        let none = cluster(2) { $0.retryBudgetPercent = 0 }
        while none.takeRetry() {}
        for _ in 0..<100 { none.requestStarted() }
        #expect(!none.takeRetry())
    }
}
