import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import Gateway

/// Echoes plaintext back; stands in for the HTTP pipeline.
private final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

/// The handler on a real loopback socket, driven by real clients (Python's ssl module and the
/// openssl CLI), to prove it interoperates beyond our own test client.
@Suite(.serialized) struct TLSSocketTests {
    let certs = TestCertificates.shared

    private func withServer(_ body: (Int) throws -> Void) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let context = try TLSServerContext(settings: TLSServerSettings(
            minimumVersion: .v1_2,
            certificates: [self.certs.defaultPair, self.certs.apiPair],
            alpnProtocols: ["h2", "http/1.1"]
        ))
        let server = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TLSServerHandler(context: context, handshakeTimeout: .seconds(5), timers: LoopTimers(eventLoop: channel.eventLoop)))
                    try channel.pipeline.syncOperations.addHandler(EchoHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .wait()
        defer { try? server.close().wait() }
        try body(try #require(server.localAddress?.port))
    }

    @Test func pythonSSLClientEchoesAndShutsDownCleanly() throws {
        let script = """
        import socket, ssl, sys
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(['http/1.1'])
        with socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5) as raw:
            s = ctx.wrap_socket(raw, server_hostname='api.example.com')
            s.sendall(b'ping over a real socket')
            data = b''
            while len(data) < 23:
                data += s.recv(100)
            print(s.version(), s.selected_alpn_protocol(), data.decode())
            s.unwrap()  # close_notify both ways: raises if the server does not answer
            print('clean')
        """
        try withServer { port in
            let output = try runProcess("/usr/bin/env", ["python3", "-c", script, String(port)])
            #expect(output == "TLSv1.3 http/1.1 ping over a real socket\nclean\n")
        }
    }

    @Test func opensslSClientNegotiatesH2AndSNI() throws {
        try withServer { port in
            let output = try runProcess("/usr/bin/openssl", [
                "s_client", "-connect", "127.0.0.1:\(port)", "-alpn", "h2,http/1.1",
                "-servername", "api.example.com", "-tls1_2",
            ], stdin: "")
            #expect(output.contains("ALPN protocol: h2"), "\(output)")
            #expect(output.contains("subject=CN = api.example.com"), "\(output)")
            #expect(output.contains("Protocol  : TLSv1.2"), "\(output)")
        }
    }

    @Test func opensslSClientWithTLS11IsRefused() throws {
        try withServer { port in
            let failure = #expect(throws: ProcessFailed.self) {
                try runProcess("/usr/bin/openssl", [
                    "s_client", "-connect", "127.0.0.1:\(port)", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0",
                ], stdin: "")
            }
            // The server's protocol_version alert (70), not a client that could not offer TLS 1.1
            // or could not connect.
            #expect(failure?.description.contains("tlsv1 alert protocol version") == true, "\(String(describing: failure))")
        }
    }
}
