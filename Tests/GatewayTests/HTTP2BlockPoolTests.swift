import Testing

@testable import Gateway

@Suite("HTTP/2 block pool (nghttp2's allocator)")
struct HTTP2BlockPoolTests {
    @Test func aFreedBlockIsReusedForTheSameClassOnly() {
        let pool = HTTP2BlockPool()
        let small = pool.allocate(40)
        pool.deallocate(small)
        let other = pool.allocate(200)
        #expect(other != small, "a 40-byte block served 200 bytes")
        let again = pool.allocate(30)
        #expect(again == small)
        pool.deallocate(other)
        pool.deallocate(again)
    }

    @Test func blocksAreAlignedAndHoldWhatWasAskedFor() {
        let pool = HTTP2BlockPool()
        var blocks: [(UnsafeMutableRawPointer, Int)] = []
        for size in [0, 1, 47, 48, 49, 111, 500, 1000, 2032, 2033, 5000, 70000] {
            let block = pool.allocate(size)
            #expect(Int(bitPattern: block) % 16 == 0)
            block.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: size), count: size)
            blocks.append((block, size))
        }
        for (block, size) in blocks {
            let bytes = UnsafeRawBufferPointer(start: block, count: size)
            #expect(bytes.allSatisfy { $0 == UInt8(truncatingIfNeeded: size) }, "block of \(size) overwritten")
            pool.deallocate(block)
        }
    }

    @Test func reallocationKeepsTheBytes() {
        let pool = HTTP2BlockPool()
        var block = pool.reallocate(nil, 10)
        block.initializeMemory(as: UInt8.self, from: Array(0..<10), count: 10)
        let same = pool.reallocate(block, 40)
        #expect(same == block, "grown although the block had room")
        for size in [100, 900, 3000, 100_000] {
            block = pool.reallocate(block, size)
            #expect(Array(UnsafeRawBufferPointer(start: block, count: 10)) == Array(0..<10))
        }
        pool.deallocate(block)
    }

    @Test func keptBlocksAreBounded() {
        let pool = HTTP2BlockPool()
        let blocks = (0..<64).map { _ in pool.allocate(2000) }
        for block in blocks { pool.deallocate(block) }
        // 64 blocks of 2 KiB went: the pool kept 32 KiB of them, the rest went back to malloc.
        #expect(pool.kept == 32 * 1024)
        let again = (0..<64).map { _ in pool.allocate(2000) }
        #expect(pool.kept == 0)
        for block in again { pool.deallocate(block) }
    }
}
