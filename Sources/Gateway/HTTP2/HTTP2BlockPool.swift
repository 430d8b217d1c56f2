/// Recycles the small blocks nghttp2 allocates and frees for every stream (the stream itself,
/// received header fields, outbound frames, the copy of a response's fields) within one
/// connection, instead of a malloc and a free each. A block starts with a 16-byte header: its
/// size class, then its usable size (or, while it waits on a free list, the next free block).
/// Blocks above the largest class, and those beyond `keptBytes`, go back to malloc.
final class HTTP2BlockPool {
    private static let headerBytes = 16
    /// Classes of 64, 128 … 2048 bytes (header included).
    private static let classCount = 6
    private static let unpooled = -1
    /// Bytes kept on the free lists: a tick's worth of streams on a busy connection, small next
    /// to the session's own buffers.
    private static let keptBytes = 32 * 1024

    private let freeLists: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// Bytes on the free lists.
    private(set) var kept = 0

    init() {
        self.freeLists = .allocate(capacity: Self.classCount)
        self.freeLists.initialize(repeating: nil, count: Self.classCount)
    }

    deinit {
        for index in 0..<Self.classCount {
            var next = self.freeLists[index]
            while let block = next {
                next = block.load(fromByteOffset: 8, as: UnsafeMutableRawPointer?.self)
                block.deallocate()
            }
        }
        self.freeLists.deallocate()
    }

    private static func classBytes(_ index: Int) -> Int { 64 << index }

    /// The smallest class that holds `bytes`, or nil above the largest.
    private static func classIndex(holding bytes: Int) -> Int? {
        let bits = Int.bitWidth - (bytes - 1).leadingZeroBitCount
        let index = max(bits - 6, 0)
        return index < Self.classCount ? index : nil
    }

    func allocate(_ size: Int) -> UnsafeMutableRawPointer {
        let needed = size + Self.headerBytes
        guard let index = Self.classIndex(holding: needed) else {
            let block = UnsafeMutableRawPointer.allocate(byteCount: needed, alignment: 16)
            block.storeBytes(of: Self.unpooled, as: Int.self)
            block.storeBytes(of: size, toByteOffset: 8, as: Int.self)
            return block + Self.headerBytes
        }
        let block: UnsafeMutableRawPointer
        if let reused = self.freeLists[index] {
            self.freeLists[index] = reused.load(fromByteOffset: 8, as: UnsafeMutableRawPointer?.self)
            self.kept -= Self.classBytes(index)
            block = reused
        } else {
            block = UnsafeMutableRawPointer.allocate(byteCount: Self.classBytes(index), alignment: 16)
            block.storeBytes(of: index, as: Int.self)
        }
        block.storeBytes(of: Self.classBytes(index) - Self.headerBytes, toByteOffset: 8, as: Int.self)
        return block + Self.headerBytes
    }

    func deallocate(_ pointer: UnsafeMutableRawPointer) {
        let block = pointer - Self.headerBytes
        let index = block.load(as: Int.self)
        guard index != Self.unpooled, self.kept + Self.classBytes(index) <= Self.keptBytes else {
            block.deallocate()
            return
        }
        self.kept += Self.classBytes(index)
        block.storeBytes(of: self.freeLists[index], toByteOffset: 8, as: UnsafeMutableRawPointer?.self)
        self.freeLists[index] = block
    }

    /// `pointer`'s bytes in a block of at least `size` bytes (the same block while it is large enough).
    func reallocate(_ pointer: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer {
        guard let pointer else { return self.allocate(size) }
        let usable = (pointer - Self.headerBytes).load(fromByteOffset: 8, as: Int.self)
        if size <= usable { return pointer }
        let grown = self.allocate(size)
        grown.copyMemory(from: pointer, byteCount: usable)
        self.deallocate(pointer)
        return grown
    }
}
