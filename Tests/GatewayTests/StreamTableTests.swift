import Testing

@testable import Gateway

/// The HTTP/2 connection's stream table against a `Dictionary` doing the same operations: ids
/// that share a home slot, runs that wrap around the end of the table, removals from the middle
/// of a run (each moving later entries back), and growth.
@Suite("HTTP/2 stream table")
struct StreamTableTests {
    final class Entry {
        let id: Int32
        init(_ id: Int32) { self.id = id }
    }

    /// Applies the same operations to the table and the model and compares them after each one.
    func check(_ operations: [(insert: Bool, id: Int32)]) {
        let table = StreamTable<Entry>(capacity: 4)
        var model: [Int32: Entry] = [:]
        for (insert, id) in operations {
            if insert {
                let entry = Entry(id)
                table.insert(entry, id: id)
                model[id] = entry
            } else {
                #expect(table.remove(id) === model.removeValue(forKey: id), "remove \(id)")
            }
            #expect(table.count == model.count)
            for (key, entry) in model { #expect(table[key] === entry, "lookup \(key)") }
            for absent in [Int32(1), 3, 5, 33, 65, 97, 129, 1_000_001] where model[absent] == nil {
                #expect(table[absent] == nil, "absent \(absent)")
            }
        }
        #expect(Set(table.all.map(ObjectIdentifier.init)) == Set(model.values.map(ObjectIdentifier.init)))
        let removed = table.removeAll()
        #expect(removed.count == model.count && table.isEmpty && table[operations.first?.id ?? 1] == nil)
    }

    @Test("Ids sharing a home slot, wrapping runs and removals in a run's middle")
    func collisionsAndWraparound() {
        // 16 slots (never more than 7 entries here, so no growth): ids 32 apart share a home slot.
        // 31, 63 and 95 all start at the last slot, so the run wraps to slots 0 and 1, where 1's
        // and 33's home is; removing 31 and then 1 shifts entries back across the end.
        let ids: [Int32] = [31, 63, 95, 1, 33, 3]
        var operations = ids.map { (insert: true, id: $0) }
        operations += [(false, 31), (false, 1), (true, 127), (false, 999), (false, 63), (true, 65), (false, 95), (false, 127)]
        self.check(operations)
    }

    @Test("Random operations on rising odd ids, as a client opens and closes streams")
    func randomOperations() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            var operations: [(insert: Bool, id: Int32)] = []
            var next: Int32 = 1
            var open: [Int32] = []
            for _ in 0..<300 {
                if open.isEmpty || (open.count < 40 && Bool.random(using: &generator)) {
                    operations.append((true, next))
                    open.append(next)
                    // Mostly the next id; sometimes a jump, so that ids land on taken home slots.
                    next += Bool.random(using: &generator) ? 2 : 2 * Int32.random(in: 1...64, using: &generator)
                } else {
                    let id = open.remove(at: Int.random(in: 0..<open.count, using: &generator))
                    operations.append((false, id))
                }
            }
            self.check(operations)
        }
    }
}
