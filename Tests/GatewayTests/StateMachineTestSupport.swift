import Testing

/// `#expect` cannot hold a mutating call on a state machine (its expansion captures the value
/// immutably); this takes the call's result instead.
func expectThat(_ condition: Bool, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(condition, sourceLocation: sourceLocation)
}
