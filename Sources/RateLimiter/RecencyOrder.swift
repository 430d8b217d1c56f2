/// Least-recently-written order of keys with O(1) amortised touch and pop.
///
/// Each touch appends `(key, seq)`; older records of the same key go stale and are skipped
/// (the owner stores the key's latest `seq`). The array is compacted once stale records
/// outnumber live keys, so memory stays within a small multiple of the key count.
struct RecencyOrder: Sendable, Hashable {
    private var records: [(key: String, seq: UInt64)] = []
    private var head = 0
    private(set) var nextSeq: UInt64 = 0

    static func == (a: RecencyOrder, b: RecencyOrder) -> Bool {
        a.head == b.head && a.nextSeq == b.nextSeq && a.records.elementsEqual(b.records) { $0 == $1 }
    }
    func hash(into h: inout Hasher) { h.combine(head); h.combine(nextSeq) }

    /// Records a write of `key`; returns the sequence number the owner must store for it.
    mutating func touch(_ key: String) -> UInt64 {
        let seq = nextSeq
        nextSeq += 1
        // The same key written again before any other (one client's burst) moves its last record
        // forward instead of adding one: the list then grows only with interleaved writes, and is
        // compacted (a look-up per record) that much less often. A record already popped is not
        // reused.
        if records.count > head, records[records.count - 1].key == key {
            records[records.count - 1].seq = seq
        } else {
            records.append((key, seq))
        }
        return seq
    }

    /// Pops the least recently written live key. `isCurrent(key, seq)` tells live from stale.
    mutating func popOldest(isCurrent: (String, UInt64) -> Bool) -> String? {
        while head < records.count {
            let r = records[head]
            head += 1
            if isCurrent(r.key, r.seq) { return r.key }
        }
        return nil
    }

    /// Drops stale records when they dominate. `liveCount` is the owner's key count.
    mutating func compactIfNeeded(liveCount: Int, isCurrent: (String, UInt64) -> Bool) {
        guard records.count - head > 2 * liveCount + 32 else { return }
        records = records[head...].filter { isCurrent($0.key, $0.seq) }
        head = 0
    }
}
