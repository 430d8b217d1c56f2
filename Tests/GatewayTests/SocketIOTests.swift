#if os(Linux)
import CSocketIO
import Glibc
import Testing

/// The gateway's `read`/`write`/`close` (Sources/CSocketIO): `recv`/`send` on sockets, the real
/// calls on anything else, with the same results and errors either way.
@Suite("Socket reads and writes without the file layer")
struct SocketIOTests {
    private static func socketPair() throws -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        return (fds[0], fds[1])
    }

    private static func pipePair() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        return (fds[0], fds[1])
    }

    private static func send(_ text: String, to fd: Int32) -> Int {
        Array(text.utf8).withUnsafeBytes { gateway_io_write(fd, $0.baseAddress, $0.count) }
    }

    private static func receive(from fd: Int32, max: Int = 64) -> (Int, String) {
        var bytes = [UInt8](repeating: 0, count: max)
        let count = bytes.withUnsafeMutableBytes { gateway_io_read(fd, $0.baseAddress, $0.count) }
        return (count, count > 0 ? String(decoding: bytes[..<count], as: UTF8.self) : "")
    }

    @Test func aSocketIsReadAndWritten() throws {
        let (a, b) = try Self.socketPair()
        defer { _ = gateway_io_close(a); _ = gateway_io_close(b) }
        #expect(Self.send("ping", to: a) == 4)
        #expect(Self.receive(from: b) == (4, "ping"))
        #expect(gateway_io_known_not_socket(a) == 0 && gateway_io_known_not_socket(b) == 0)
        // End of stream reads as 0, as read(2) says.
        #expect(gateway_io_close(a) == 0)
        #expect(Self.receive(from: b).0 == 0)
    }

    @Test func aNonBlockingSocketWithNothingToReadSaysSo() throws {
        let (a, b) = try Self.socketPair()
        defer { _ = gateway_io_close(a); _ = gateway_io_close(b) }
        #expect(fcntl(b, F_SETFL, fcntl(b, F_GETFL) | O_NONBLOCK) == 0)
        #expect(Self.receive(from: b).0 == -1)
        #expect(errno == EAGAIN || errno == EWOULDBLOCK)
    }

    @Test func aPipeIsReadAndWrittenEveryTime() throws {
        let (r, w) = try Self.pipePair()
        defer { _ = gateway_io_close(r); _ = gateway_io_close(w) }
        for round in 0..<3 {
            #expect(Self.send("round \(round)", to: w) == 7)
            #expect(Self.receive(from: r) == (7, "round \(round)"))
        }
        #expect(gateway_io_known_not_socket(r) == 1 && gateway_io_known_not_socket(w) == 1)
    }

    /// A descriptor number that was a pipe and is a socket after a close is read as a socket:
    /// the close forgot what the number was.
    @Test func aNumberReusedAfterACloseIsTakenForWhatItIsNow() throws {
        let (r, w) = try Self.pipePair()
        #expect(Self.send("x", to: w) == 1)
        #expect(Self.receive(from: r) == (1, "x"))
        #expect(gateway_io_known_not_socket(r) == 1)
        #expect(gateway_io_close(r) == 0)
        #expect(gateway_io_close(w) == 0)
        #expect(gateway_io_known_not_socket(r) == 0 && gateway_io_known_not_socket(w) == 0)
        let (a, b) = try Self.socketPair()
        defer { _ = gateway_io_close(a); _ = gateway_io_close(b) }
        // Numbers are reused lowest first: the socket may well have the pipe's numbers.
        #expect(gateway_io_known_not_socket(a) == 0 && gateway_io_known_not_socket(b) == 0)
        #expect(Self.send("socket", to: a) == 6)
        #expect(Self.receive(from: b) == (6, "socket"))
        let (c, d) = try Self.pipePair()
        defer { _ = gateway_io_close(c); _ = gateway_io_close(d) }
        #expect(Self.send("pipe", to: d) == 4)
        #expect(Self.receive(from: c) == (4, "pipe"))
    }

    @Test func errorsAreTheRealCallsErrors() throws {
        #expect(Self.receive(from: -1).0 == -1)
        #expect(errno == EBADF)
        #expect(Self.send("x", to: 1 << 20) == -1)
        #expect(errno == EBADF)
        let (a, b) = try Self.socketPair()
        #expect(gateway_io_close(b) == 0)
        // Writing to a socket whose peer is gone: EPIPE (SIGPIPE is ignored by the test runner's
        // swift-nio as by the gateway).
        signal(SIGPIPE, SIG_IGN)
        #expect(Self.send("x", to: a) == -1)
        #expect(errno == EPIPE)
        #expect(gateway_io_close(a) == 0)
        #expect(gateway_io_close(a) == -1)
        #expect(errno == EBADF)
    }
}
#endif
