"""HTTP/1.1 pipelining and Upgrade against the real gateway: a flood of pipelined requests behind a
slow one, requests pipelined behind gateway-made errors, Upgrade requests (served as plain ones) and
upstreams that answer 101."""
import json
import re
import socket
import ssl
import threading
import time

import pytest

from conftest import free_port, raw_request, status_of

# HTTP1ServerHandler.defaultMaxQueuedRequests
QUEUE_CAP = 256

TINY = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def connect(port, tls=False, timeout=10.0):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    return sock


class Reader:
    """Reads HTTP/1.1 responses (Content-Length or chunked framing) off a socket in order."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk

    def _until(self, marker):
        while marker not in self.buf:
            if self.eof:
                return None
            self._fill()
        data, self.buf = self.buf.split(marker, 1)
        return data

    def _exactly(self, n):
        while len(self.buf) < n and not self.eof:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self):
        """(status, headers dict with lower-case names, body) or None at EOF."""
        head = self._until(b"\r\n\r\n")
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                body += self._exactly(size)
                self._exactly(2)
        else:
            body = self._exactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def closed(self):
        """True when the server closes with nothing more to read."""
        while not self.eof:
            self._fill()
        return self.buf == b""


def gateway_alive(gw):
    return gw.proc.poll() is None and status_of(raw_request(gw.ports["plain"], b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


def send_in_background(sock, data):
    """sendall on a thread: the gateway stops reading while its responses wait to be read."""
    errors = []

    def send():
        try:
            sock.sendall(data)
        except OSError as error:  # the gateway closed first
            errors.append(error)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_pipelined_flood_behind_slow_request_over_tls(gateway, upstream):
    """One write: a slow proxied request, then 12,000 tiny pipelined ones answered 404 locally. The
    gateway used to recurse once per queued request and die of a stack overflow (SIGSEGV) after
    ~2,500 responses."""
    count = 12_000
    sock = connect(gateway.ports["public"], tls=True, timeout=20)
    flood = b"".join(b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: pipe-%06d\r\n\r\n" % i for i in range(count))
    sender = send_in_background(sock, b"GET /api/bookings?delay_ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n" + flood)

    # Another client is served while the flood waits on the slow request.
    other = raw_request(gateway.ports["public"], b"GET /api/barbers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", tls=True)
    assert status_of(other) == 200

    reader = Reader(sock)
    first = reader.response()
    assert first is not None and first[0] == 200
    assert json.loads(first[2])  # the slow request's own body, first
    ids, last = [], None
    while len(ids) < count and (response := reader.response()) is not None:
        assert response[0] == 404
        ids.append(response[1]["x-request-id"])
        last = response
    # Answered in order. A read that decodes to more than the queue cap is cut there: the
    # requests up to the cap are answered, the last with `Connection: close`, and the rest dropped.
    assert ids == [f"pipe-{i:06d}" for i in range(len(ids))]
    assert len(ids) >= QUEUE_CAP
    if len(ids) < count:
        assert last[1].get("connection") == "close"
        assert reader.closed()
    sock.close()
    sender.join(timeout=10)
    assert gateway_alive(gateway)
    print(f"answered {len(ids)} of {count} pipelined requests")


def test_pipelined_rounds_on_one_connection_are_all_answered(gateway, upstream):
    """Rounds of 100 pipelined requests (below the cap): the queue drains and reading resumes
    every time."""
    sock = connect(gateway.ports["plain"])
    reader = Reader(sock)
    for round_number in range(20):
        sock.sendall(b"".join(b"GET /r%d-%d HTTP/1.1\r\nHost: x\r\nX-Request-Id: r%d-%d\r\n\r\n"
                              % (round_number, i, round_number, i) for i in range(100)))
        for i in range(100):
            response = reader.response()
            assert response is not None and response[0] == 404
            assert response[1]["x-request-id"] == f"r{round_number}-{i}"
            assert response[1].get("connection") != "close"
    sock.close()
    assert gateway_alive(gateway)


@pytest.mark.parametrize("listener", ["plain", "public"])
def test_pipelined_proxied_requests_ending_in_close_are_all_answered(gateway, upstream, listener):
    """Proxied responses leave at the end of their event-loop tick; a connection that closes after
    its last response must flush the ones still waiting first (a close drops unflushed writes)."""
    count = 50
    sock = connect(gateway.ports[listener], tls=listener == "public")
    requests = [b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nX-Request-Id: pc-%03d\r\n\r\n" % i for i in range(count - 1)]
    requests.append(b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nX-Request-Id: pc-%03d\r\nConnection: close\r\n\r\n" % (count - 1))
    sock.sendall(b"".join(requests))
    reader = Reader(sock)
    ids = []
    while (response := reader.response()) is not None:
        assert response[0] == 200
        ids.append(response[1]["x-request-id"])
    assert ids == [f"pc-{i:03d}" for i in range(count)]
    assert reader.closed()
    sock.close()


def dead_upstream_config():
    dead = free_port()
    upstreams = f"""  dead:
    endpoints: [127.0.0.1:{dead}]
    connect_timeout: 300ms
    response_timeout: 1s
"""
    routes = """  - name: dead
    match: { path_prefix: /dead/ }
    upstream: dead
"""
    return upstreams, routes


def test_request_behind_a_gateway_made_502_gets_its_own_response(gateway_factory, upstream):
    upstreams, routes = dead_upstream_config()
    gw = gateway_factory(upstream.port, upstream_extra=upstreams, extra_routes=routes)
    for tls, port in ((False, gw.ports["plain"]), (True, gw.ports["public"])):
        sock = connect(port, tls=tls)
        sock.sendall(
            b"GET /dead/x HTTP/1.1\r\nHost: x\r\nX-Request-Id: first-000000001\r\n\r\n"
            b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nX-Request-Id: second-00000002\r\n\r\n"
            b"GET /api/barbers HTTP/1.1\r\nHost: x\r\nX-Request-Id: third-000000003\r\nConnection: close\r\n\r\n")
        reader = Reader(sock)
        first, second, third = reader.response(), reader.response(), reader.response()
        assert reader.closed()
        sock.close()
        assert first[0] in (502, 503), first
        assert first[1]["x-request-id"] == "first-000000001"
        assert json.loads(first[2])["error"]
        assert second[0] == 200 and second[1]["x-request-id"] == "second-00000002"
        assert "bookings" in second[2].decode() or json.loads(second[2]) is not None
        assert third[0] == 200 and third[1]["x-request-id"] == "third-000000003"
        assert second[2] != third[2]
    log = gw.access_log()
    by_id = {line.get("request_id"): line.get("status") for line in log}
    assert by_id.get("second-00000002") == 200 and by_id.get("third-000000003") == 200
    assert 499 not in by_id.values()


def test_request_behind_a_429_gets_its_own_response(gateway_factory, upstream):
    top = """rate_limits:
  policies:
    one: { limit: 1, window: 60s, key: client_ip, algorithm: sliding_window }
"""
    routes = """  - name: limited
    match: { path_prefix: /limited/ }
    upstream: booking
    rate_limits: [one]
"""
    gw = gateway_factory(upstream.port, top_extra=top, extra_routes=routes)
    sock = connect(gw.ports["plain"])
    sock.sendall(
        b"GET /limited/a HTTP/1.1\r\nHost: x\r\nX-Request-Id: limited-0000001\r\n\r\n"
        b"GET /limited/b HTTP/1.1\r\nHost: x\r\nX-Request-Id: limited-0000002\r\n\r\n"
        b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nX-Request-Id: after-000000003\r\nConnection: close\r\n\r\n")
    reader = Reader(sock)
    responses = [reader.response() for _ in range(3)]
    assert reader.closed()
    sock.close()
    assert [r[0] for r in responses[1:]] == [429, 200]
    assert responses[0][0] != 429
    assert [r[1]["x-request-id"] for r in responses] == ["limited-0000001", "limited-0000002", "after-000000003"]


def test_request_behind_a_401_gets_its_own_response(gateway_factory, upstream):
    top = """jwt:
  issuer: barberpro-auth
  audiences: [barberpro-api]
  keys:
    - { kid: hs-1, algorithm: HS256, secret: "pipelining-test-secret-0123456789abcdef" }
"""
    routes = """  - name: secure
    match: { path_prefix: /secure/ }
    upstream: booking
    auth: required
"""
    gw = gateway_factory(upstream.port, top_extra=top, extra_routes=routes)
    sock = connect(gw.ports["public"], tls=True)
    sock.sendall(
        b"GET /secure/a HTTP/1.1\r\nHost: x\r\nX-Request-Id: noauth-00000001\r\n\r\n"
        b"GET /secure/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not.a.jwt\r\nX-Request-Id: badauth-0000002\r\n\r\n"
        b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nX-Request-Id: after-000000003\r\nConnection: close\r\n\r\n")
    reader = Reader(sock)
    responses = [reader.response() for _ in range(3)]
    assert reader.closed()
    sock.close()
    assert [r[0] for r in responses] == [401, 401, 200]
    assert [r[1]["x-request-id"] for r in responses] == ["noauth-00000001", "badauth-0000002", "after-000000003"]
    assert all("www-authenticate" in r[1] for r in responses[:2])


UPGRADE = (b"GET /api/echo-headers HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_upgrade_request_is_proxied_as_plain_and_the_connection_keeps_parsing(gateway, upstream):
    sock = connect(gateway.ports["plain"])
    sock.sendall(UPGRADE + b"GET /api/barbers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reader = Reader(sock)
    first, second = reader.response(), reader.response()
    assert reader.closed()
    sock.close()
    assert first[0] == 200
    seen = {name.lower() for name, _ in json.loads(first[2])["headers"]}
    assert "upgrade" not in seen and "connection" not in seen
    assert "sec-websocket-key" in seen  # end-to-end fields still travel
    assert "upgrade" not in first[1]
    assert second[0] == 200


def test_h2c_upgrade_is_not_honoured(gateway, upstream):
    sock = connect(gateway.ports["plain"])
    sock.sendall(b"GET /api/barbers HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                 b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
                 b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reader = Reader(sock)
    first, second = reader.response(), reader.response()
    assert reader.closed()
    sock.close()
    assert first[0] == 200 and second[0] == 200


def send_and_read_until_closed(sock, data, deadline):
    """Sends `data` while reading whatever comes back, from one thread (an SSL socket must not be
    used from two threads at once), until the server closes or the deadline passes. Returns what
    was read and whether the server closed."""
    import select
    sock.setblocking(False)
    out = memoryview(data)
    received = b""
    while time.time() < deadline:
        readable, writable, _ = select.select([sock], [sock] if out else [], [], 0.2)
        if readable or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            try:
                chunk = sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                chunk = None
            except (ConnectionResetError, ssl.SSLError, OSError):
                return received, True
            if chunk == b"":
                return received, True
            if chunk:
                received += chunk
        if writable and out:
            try:
                out = out[sock.send(out[:65536]):]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
            except OSError:  # the gateway closed its side: expected once it sees the junk
                out = memoryview(b"")
    return received, False


@pytest.mark.parametrize("tls", [False, True])
def test_upgrade_followed_by_megabytes_of_junk_costs_flat_memory(gateway, upstream, tls):
    port = gateway.ports["public" if tls else "plain"]
    before = gateway.rss_kib()
    sock = connect(port, tls=tls, timeout=10)
    junk = bytes(range(256)) * 4096  # 1 MiB, not HTTP
    received, closed = send_and_read_until_closed(sock, UPGRADE + junk * 16, time.time() + 20)
    sock.close()
    # The upgrade request is answered as a plain one; the junk is parsed as the next request:
    # refused with 400, then the connection closes.
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) [A-Z]", received)]
    assert statuses == [200, 400], received[:500]
    assert closed
    assert gateway.rss_kib() - before < 32 * 1024
    assert gateway_alive(gateway)


class SwitchingUpstream:
    """Answers every request with `101 Switching Protocols`, then echoes whatever follows."""

    def __init__(self):
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        data = b""
        with conn:
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests += 1
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                             b"\x81\x05hello")
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def stop(self):
        self.server.close()


def test_upstream_101_is_never_relayed(gateway_factory, upstream):
    switching = SwitchingUpstream()
    try:
        upstreams = f"""  switching:
    endpoints: [127.0.0.1:{switching.port}]
    response_timeout: 2s
"""
        routes = """  - name: switching
    match: { path_prefix: /ws/ }
    upstream: switching
"""
        gw = gateway_factory(upstream.port, upstream_extra=upstreams, extra_routes=routes)
        for request in (UPGRADE.replace(b"/api/echo-headers", b"/ws/chat"),
                        b"GET /ws/plain HTTP/1.1\r\nHost: x\r\n\r\n"):
            sock = connect(gw.ports["plain"])
            sock.sendall(request + b"GET /api/barbers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reader = Reader(sock)
            first, second = reader.response(), reader.response()
            sock.close()
            assert first[0] == 502, first
            assert b"hello" not in first[2]
            assert second is not None and second[0] == 200
        assert switching.requests >= 2
        assert gateway_alive(gw)
    finally:
        switching.stop()


def test_http2_request_carrying_upgrade_is_refused(gateway, upstream):
    """nghttp2 treats connection-specific fields in an HTTP/2 request as malformed (RFC 9113 §8.2.2):
    the stream is reset, the upstream never sees it."""
    h2 = pytest.importorskip("h2")
    import h2.config
    import h2.connection
    import h2.events

    before = upstream.stats()["requests"]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gateway.ports["public"]), timeout=5),
                           server_hostname="localhost")
    assert sock.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                                                         normalize_outbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/api/bookings"), (":scheme", "https"), (":authority", "x"),
                          ("connection", "upgrade"), ("upgrade", "websocket")], end_stream=True)
    conn.send_headers(3, [(":method", "GET"), (":path", "/api/barbers"), (":scheme", "https"), (":authority", "x")],
                      end_stream=True)
    sock.sendall(conn.data_to_send())
    statuses, resets = {}, set()
    deadline = time.time() + 5
    while time.time() < deadline and (3 not in statuses or (1 not in resets and 1 not in statuses)):
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                statuses[event.stream_id] = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.StreamReset):
                resets.add(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                resets.add(1)
        sock.sendall(conn.data_to_send())
    sock.close()
    assert 1 in resets and 1 not in statuses
    assert statuses.get(3) == b"200"
    assert upstream.stats()["requests"] - before == 1
