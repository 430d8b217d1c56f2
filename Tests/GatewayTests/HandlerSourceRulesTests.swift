import Foundation
import Testing

/// Rules about how the channel handlers are written that the compiler does not enforce but the
/// release build's speed depends on, checked over the package's sources.
@Suite("Handler source rules")
struct HandlerSourceRulesTests {
    /// swift-nio's `unwrapInboundIn`/`wrapOutboundOut` called through the dynamic `Self` type
    /// (`Self.unwrapInboundIn(data)`) are left generic in the release build: every read and write
    /// then runs `NIOAny.forceAs<T>`'s metatype checks and a dynamic cast (~280 instructions a
    /// read). Called on `self`, they are specialized to a payload check. The modules on a
    /// request's path, and the benchmark's load generator and demo upstream, use `self.`.
    @Test func handlersUnwrapAndWrapThroughSelfNotTheDynamicSelfType() throws {
        let root = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        var offending: [String] = []
        var scanned = 0
        for module in ["Gateway", "TLSClient", "GatewayBench", "DemoUpstream"] {
            let directory = root.appendingPathComponent("Sources").appendingPathComponent(module)
            let files = try #require(FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil))
            for case let file as URL in files where file.pathExtension == "swift" {
                scanned += 1
                let lines = try String(contentsOf: file, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
                for (number, line) in lines.enumerated() {
                    for call in ["unwrapInboundIn(", "unwrapOutboundIn(", "wrapInboundOut(", "wrapOutboundOut("]
                    where line.contains("Self." + call) {
                        offending.append("\(module)/\(file.lastPathComponent):\(number + 1)")
                    }
                }
            }
        }
        #expect(scanned > 50, "the sources were found")
        #expect(offending.isEmpty, "use self.unwrapInboundIn / self.wrapOutboundOut: \(offending)")
    }
}
