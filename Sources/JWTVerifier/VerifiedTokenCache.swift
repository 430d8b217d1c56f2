import Synchronization

/// Bounded cache of verified tokens, keyed by the SHA-256 of the token bytes.
///
/// Why SHA-256: the key must never let a different token hit a cached entry. SHA-256 collisions are
/// infeasible, so equal digests mean equal tokens and the cache can hold 32 bytes per entry instead of
/// the token. A 64-bit keyed hash would be faster (~0.1 µs less per call) but leaves a 2⁻⁶⁴-scale
/// forgery chance that grows with traffic; not worth it for an auth decision.
///
/// Eviction is FIFO through a ring of slots: when full, the oldest inserted entry goes. Expired
/// entries are dropped when looked up; tokens live ≤ `maxLifetime`, so FIFO order ≈ expiry order.
/// Lookups and inserts are O(1) under one `Mutex`; hashing happens outside the lock.
final class VerifiedTokenCache: Sendable {
    private struct Entry {
        var claims: VerifiedClaims
        var slot: Int
    }

    private struct State {
        var entries: [TokenDigest: Entry] = [:]
        var ring: [TokenDigest?]
        var next = 0
        var generation: UInt64 = 0
    }

    let capacity: Int
    private let state: Mutex<State>

    init(capacity: Int) {
        self.capacity = max(0, capacity)
        self.state = Mutex(State(ring: Array(repeating: nil, count: max(0, capacity))))
    }

    var count: Int { state.withLock { $0.entries.count } }
    var generation: UInt64 { state.withLock { $0.generation } }

    func lookup(_ digest: TokenDigest) -> VerifiedClaims? {
        state.withLock { $0.entries[digest]?.claims }
    }

    func remove(_ digest: TokenDigest) {
        state.withLock { state in
            if let entry = state.entries.removeValue(forKey: digest) { state.ring[entry.slot] = nil }
        }
    }

    /// Inserts unless the key set changed since `generation` was read (a token verified with a key that
    /// has just been withdrawn must not outlive the swap in the cache).
    func insert(_ digest: TokenDigest, claims: VerifiedClaims, generation: UInt64) {
        guard capacity > 0 else { return }
        state.withLock { state in
            guard state.generation == generation, state.entries[digest] == nil else { return }
            let slot = state.next
            if let old = state.ring[slot] { state.entries.removeValue(forKey: old) }
            state.ring[slot] = digest
            state.entries[digest] = Entry(claims: claims, slot: slot)
            state.next = (slot + 1) % capacity
        }
    }

    /// Drops everything and starts a new generation (called when keys are replaced).
    func invalidateAll() {
        state.withLock { state in
            state.entries.removeAll(keepingCapacity: true)
            for index in state.ring.indices { state.ring[index] = nil }
            state.next = 0
            state.generation &+= 1
        }
    }
}
