"""WebSocket tunnels through the real gateway: real `websockets` clients and a real `websockets` upstream."""
import base64
import hashlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import metric, raw_request, scrape_metrics, status_of

SECRET = "integration-secret-0123456789-abcdefgh"

UPSTREAM = textwrap.dedent("""\
    import asyncio, sys
    from websockets.asyncio.server import serve
    from websockets.http11 import Response
    from websockets.datastructures import Headers

    handshakes = 0

    async def handler(ws):
        if ws.request.path.startswith(("/browser-ws/", "/push-ws/")):
            # What a browser's upstream sees of the subprotocol list, before any echo.
            await ws.send(ws.request.headers.get("Sec-WebSocket-Protocol") or "-")
        async for message in ws:
            await ws.send(message)

    def process_request(connection, request):
        global handshakes
        if request.path.startswith("/ws/count"):
            return Response(200, "OK", Headers([("Content-Length", str(len(str(handshakes))))]), str(handshakes).encode())
        handshakes += 1
        if request.path.startswith("/ws/refuse"):
            return Response(403, "Forbidden", Headers([("Content-Length", "7")]), b"refused")
        return None

    async def main():
        async with serve(handler, "127.0.0.1", 0, process_request=process_request, max_size=None,
                         ping_interval=None) as server:
            print("port", server.sockets[0].getsockname()[1], flush=True)
            await asyncio.Future()

    asyncio.run(main())
""")


class WSUpstream:
    def __init__(self, tmp_path):
        script = tmp_path / "ws_upstream.py"
        script.write_text(UPSTREAM)
        self.proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline().split()[1])

    def handshakes(self):
        # /ws/count answers 200 with the number of other requests so far.
        out = raw_request(self.port, b"GET /ws/count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return int(out.split(b"\r\n\r\n", 1)[1])

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def ws_upstream(tmp_path):
    u = WSUpstream(tmp_path)
    yield u
    u.stop()


TOP = f"""\
cors:
  allowed_origins: [https://book.barberpro.com.ar]
  allowed_methods: [GET]
jwt:
  issuer: barberpro-auth
  audiences: [barberpro-api]
  keys:
    - {{ kid: hs-1, algorithm: HS256, secret: "{SECRET}" }}
"""


def routes(idle="1h"):
    return f"""\
  - name: ws
    match: {{ path_prefix: /ws/ }}
    upstream: realtime
    websocket: true
    timeouts: {{ tunnel_idle: {idle} }}
  - name: ws-auth
    match: {{ path_prefix: /secure-ws/ }}
    upstream: realtime
    websocket: true
    auth: required
  - name: not-ws
    match: {{ path_prefix: /plain-ws/ }}
    upstream: realtime
"""


@pytest.fixture
def start(gateway_factory, upstream, ws_upstream):
    def run(idle="1h", realtime_port=None):
        extra = f"  realtime:\n    endpoints: [127.0.0.1:{realtime_port or ws_upstream.port}]\n    response_timeout: 2s\n"
        return gateway_factory(upstream.port, top_extra=TOP, upstream_extra=extra, extra_routes=routes(idle))
    return run


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wss(gw, path):
    return f"wss://127.0.0.1:{gw.ports['public']}{path}"


def token(sub="u-1"):
    now = int(time.time())
    return jwt.encode({"iss": "barberpro-auth", "aud": "barberpro-api", "sub": sub, "iat": now, "exp": now + 600},
                      SECRET, algorithm="HS256", headers={"kid": "hs-1"})


def handshake(path, key=b"dGhlIHNhbXBsZSBub25jZQ==", extra=b""):
    return (b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")


def masked_text_frame(text: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(text) < 126
    return bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


def read_until(sock, marker: bytes, deadline=5.0) -> bytes:
    sock.settimeout(deadline)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_text_and_binary_frames_echo_over_h1(start):
    gw = start()
    with connect(wss(gw, "/ws/echo"), ssl=tls_context(), max_size=None) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"
        binary = os.urandom(4000)  # incompressible: permessage-deflate is on
        ws.send(binary)
        assert ws.recv(timeout=5) == binary
    samples = scrape_metrics(gw)
    assert metric(samples, "gateway_tunnels_active", route="ws") == 0
    assert metric(samples, "gateway_tunnel_bytes_total", route="ws", direction="in") > 4000
    log = [line for line in gw.access_log() if line.get("route") == "ws"]
    assert log and log[-1]["status"] == 101 and log[-1]["bytes_in"] > 4000 and log[-1]["bytes_out"] > 4000


def test_16_mib_message_both_ways_with_flat_rss(start):
    gw = start()
    payload = os.urandom(16 << 20)
    with connect(wss(gw, "/ws/echo"), ssl=tls_context(), max_size=None) as ws:
        ws.send(b"warm-up")
        ws.recv(timeout=5)
        before = gw.rss_kib()
        ws.send(payload)
        echoed = ws.recv(timeout=60)
        after = gw.rss_kib()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    # Buffering the message in either direction would cost 16 MiB or more.
    assert after - before < 8 * 1024, (before, after)


def test_jwt_refused_before_the_upgrade(start, ws_upstream):
    gw = start()
    before = ws_upstream.handshakes()
    out = raw_request(gw.ports["plain"], handshake(b"/secure-ws/echo") + b"", timeout=2)
    assert status_of(out) == 401
    assert ws_upstream.handshakes() == before
    with connect(f"ws://127.0.0.1:{gw.ports['plain']}/secure-ws/echo",
                 additional_headers={"Authorization": "Bearer " + token()}) as ws:
        ws.send("authorised")
        assert ws.recv(timeout=5) == "authorised"


def test_cors_refused_origin_gets_403(start, ws_upstream):
    gw = start()
    before = ws_upstream.handshakes()
    out = raw_request(gw.ports["plain"], handshake(b"/ws/echo", extra=b"Origin: https://evil.example\r\n"), timeout=2)
    assert status_of(out) == 403
    assert ws_upstream.handshakes() == before
    with connect(f"ws://127.0.0.1:{gw.ports['plain']}/ws/echo", origin="https://book.barberpro.com.ar") as ws:
        ws.send("ok")
        assert ws.recv(timeout=5) == "ok"


def test_upstream_refusal_is_relayed_and_the_connection_goes_on(start):
    gw = start()
    with socket.create_connection(("127.0.0.1", gw.ports["plain"])) as s:
        s.sendall(handshake(b"/ws/refuse"))
        first = read_until(s, b"refused")
        assert status_of(first) == 403 and first.endswith(b"refused")
        s.sendall(b"GET /api/bookings HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        second = read_until(s, b"bk_1")
        assert status_of(second) == 200


def test_non_websocket_route_does_not_tunnel(start, ws_upstream):
    gw = start()
    out = raw_request(gw.ports["plain"], handshake(b"/plain-ws/echo", extra=b"Connection: close\r\n"), timeout=3)
    # Upgrade is not forwarded there, so the upstream sees a plain GET and refuses it (426 from websockets).
    assert status_of(out) not in (101, 200)
    assert b"sec-websocket-accept" not in out.lower()


def bad_accept_upstream(stop):
    """An upstream that answers every request with 101 but a wrong Sec-WebSocket-Accept."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            read_until(conn, b"\r\n\r\n")
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n\x81\x02hi")
            time.sleep(0.5)
            conn.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def test_upstream_101_without_matching_accept_is_refused(start):
    stop = threading.Event()
    try:
        gw = start(realtime_port=bad_accept_upstream(stop))
        out = raw_request(gw.ports["plain"], handshake(b"/ws/echo"), timeout=3)
        assert status_of(out) == 502
        assert b"\x81\x02hi" not in out
    finally:
        stop.set()


def test_frames_pipelined_after_the_handshake_reach_the_upstream(start):
    gw = start()
    with socket.create_connection(("127.0.0.1", gw.ports["plain"])) as s:
        s.sendall(handshake(b"/ws/echo") + masked_text_frame(b"early bird"))
        data = read_until(s, b"early bird")
        head, rest = data.split(b"\r\n\r\n", 1)
        assert status_of(head) == 101
        expected = base64.b64encode(hashlib.sha1(b"dGhlIHNhbXBsZSBub25jZQ==" + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        assert b"sec-websocket-accept: " + expected.lower() in head.lower()
        assert rest == b"\x81\x0aearly bird"


def test_idle_tunnel_is_closed(start):
    gw = start(idle="1s")
    with connect(f"ws://127.0.0.1:{gw.ports['plain']}/ws/echo") as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        opened = time.monotonic()
        deadline = opened + 15
        while time.monotonic() < deadline and ws.protocol.state.name == "OPEN":
            try:
                ws.recv(timeout=0.2)
            except TimeoutError:
                pass
            except Exception:
                break
        assert ws.protocol.state.name != "OPEN"
        assert time.monotonic() - opened >= 0.9


def test_sigterm_closes_open_tunnels_within_the_drain(start):
    gw = start()
    with connect(f"ws://127.0.0.1:{gw.ports['plain']}/ws/echo") as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        gw.proc.send_signal(signal.SIGTERM)
        # The tunnel still works during the drain (5 s here), then both ends get "going away".
        ws.send("during")
        assert ws.recv(timeout=5) == "during"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    gw.proc.wait(timeout=20)


def test_slow_reader_keeps_rss_flat(start):
    """The client stops reading while the upstream keeps echoing: the gateway must stop reading too."""
    gw = start()
    s = socket.create_connection(("127.0.0.1", gw.ports["plain"]))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(handshake(b"/ws/echo"))
    assert status_of(read_until(s, b"\r\n\r\n")) == 101
    before = gw.rss_kib()
    chunk = os.urandom(1 << 20)
    mask = b"\x00\x00\x00\x00"
    frame = bytes([0x82, 0xFF]) + len(chunk).to_bytes(8, "big") + mask + chunk
    s.settimeout(0.5)
    sent = 0
    # Up to 256 MiB: with backpressure the client's sends stall once every buffer on the way is
    # full, and those (four sockets' kernel buffers each way, autotuned up to several MiB, and the
    # echo upstream's own queue of 16 messages) can hold ~50 MiB: a 64 MiB bound was once met on
    # a loaded machine with nothing wrong in the gateway.
    try:
        for _ in range(256):
            s.sendall(frame)
            sent += len(chunk)
    except (socket.timeout, BlockingIOError):
        pass
    after = gw.rss_kib()
    s.close()
    # Without backpressure the gateway would hold what the client does not read (tens of MiB).
    assert sent < 256 * len(chunk), (sent, before, after)
    assert after - before < 16 * 1024, (sent, before, after)


# --- Server-Sent Events and other streamed responses -------------------------------------------

def sse_upstream(stop):
    """Answers /sse/events with an event every 300 ms (each carrying the time it was written) and
    /sse/stall with one NDJSON chunk and then silence."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    def handle(conn):
        with conn:
            head = read_until(conn, b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/sse/events"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: close\r\n\r\n")
                for i in range(4):
                    conn.sendall(chunk(b"data: %d %.6f\n\n" % (i, time.time())))
                    time.sleep(0.3)
                conn.sendall(b"0\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: close\r\n\r\n" + chunk(b'{"n":1}\n'))
                stop.wait(15)

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


@pytest.fixture
def sse_gateway(gateway_factory, upstream):
    stop = threading.Event()
    port = sse_upstream(stop)
    extra = f"  events:\n    endpoints: [127.0.0.1:{port}]\n    response_timeout: 500ms\n"
    extra_routes = """\
  - name: sse
    match: { path_prefix: /sse/events }
    upstream: events
  - name: stream
    match: { path_prefix: /sse/stall }
    upstream: events
    streaming: true
    timeouts: { stream_idle: 1s }
"""
    gw = gateway_factory(upstream.port, upstream_extra=extra, extra_routes=extra_routes,
                         listeners_extra="  - name: h2c\n    address: 127.0.0.1:0\n    protocols: [h2c]\n")
    yield gw
    stop.set()


@pytest.mark.parametrize("http2", [False, True])
def test_sse_events_arrive_as_written(sse_gateway, http2):
    lags = []
    with httpx.Client(verify=False, http2=http2, timeout=10) as c:
        with c.stream("GET", sse_gateway.url("/sse/events")) as r:
            assert r.status_code == 200
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    _, sent = line[6:].split()
                    lags.append(time.time() - float(sent))
    assert len(lags) == 4
    # Each event arrives before the upstream writes the next one (300 ms later): nothing is held
    # back until the end of the response, which takes 1.2 s.
    assert max(lags) < 0.3, lags
    print(f"SSE lag over {'h2' if http2 else 'h1'}: median {sorted(lags)[2] * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms")


def test_stream_idle_cuts_a_silent_stream_not_the_response_timeout(sse_gateway):
    started = time.monotonic()
    with httpx.Client(timeout=20) as c:
        with c.stream("GET", sse_gateway.url("/sse/stall", listener="plain")) as r:
            # The 500 ms response timeout covered the head only.
            assert r.status_code == 200
            received = b""
            with pytest.raises(httpx.RemoteProtocolError):
                for data in r.iter_raw():
                    received += data
    elapsed = time.monotonic() - started
    assert received == b'{"n":1}\n'
    assert 1.0 <= elapsed < 10, elapsed


# --- WebSocket over HTTP/2 (RFC 8441 extended CONNECT) -----------------------------------------

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.settings  # noqa: E402


@pytest.fixture
def h2c_start(gateway_factory, upstream, ws_upstream):
    def run():
        extra = f"  realtime:\n    endpoints: [127.0.0.1:{ws_upstream.port}]\n    response_timeout: 2s\n"
        return gateway_factory(upstream.port, top_extra=TOP, upstream_extra=extra, extra_routes=routes(),
                               listeners_extra="  - name: h2c\n    address: 127.0.0.1:0\n    protocols: [h2c]\n")
    return run


class ExtendedConnect:
    """One RFC 8441 WebSocket stream over a real h2c connection, driven by the `h2` library."""

    def __init__(self, port, path, headers=()):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        while self.conn.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL) != 1:
            self._pump()
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.stream, [
            (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"), (":path", path),
            (":authority", "localhost"), ("sec-websocket-version", "13"), *headers])
        self.sock.sendall(self.conn.data_to_send())
        self.status = None
        self.data = b""
        self.ended = False
        while self.status is None:
            self._pump()

    def _pump(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        for event in self.conn.receive_data(chunk):
            if isinstance(event, h2.events.ResponseReceived):
                self.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.data += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                self.ended = True
        self.sock.sendall(self.conn.data_to_send())

    def send(self, data: bytes):
        while data:
            window = min(self.conn.local_flow_control_window(self.stream), self.conn.max_outbound_frame_size)
            if window == 0:
                self._pump()
                continue
            self.conn.send_data(self.stream, data[:window])
            self.sock.sendall(self.conn.data_to_send())
            data = data[window:]

    def receive_until(self, expected_length):
        while len(self.data) < expected_length and not self.ended:
            self._pump()
        return self.data


def masked_binary_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([0x82, 0x80 | 126]) + length.to_bytes(2, "big") if length < 65536 else \
        bytes([0x82, 0x80 | 127]) + length.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_websocket_over_http2_extended_connect(h2c_start):
    gw = h2c_start()
    ws = ExtendedConnect(gw.ports["h2c"], "/ws/echo")
    assert ws.status == 200
    ws.send(masked_text_frame(b"over h2"))
    assert ws.receive_until(9) == b"\x81\x07over h2"
    payload = os.urandom(40_000)
    ws.data = b""
    ws.send(masked_binary_frame(payload))
    # The echo comes back unmasked: 4 header bytes (16-bit length) and the payload.
    assert ws.receive_until(4 + len(payload)) == bytes([0x82, 126]) + len(payload).to_bytes(2, "big") + payload
    samples = scrape_metrics(gw)
    assert metric(samples, "gateway_tunnels_active", route="ws") == 1
    ws.sock.close()


def test_extended_connect_goes_through_jwt_first(h2c_start, ws_upstream):
    gw = h2c_start()
    before = ws_upstream.handshakes()
    assert ExtendedConnect(gw.ports["h2c"], "/secure-ws/echo").status == 401
    assert ws_upstream.handshakes() == before
    ws = ExtendedConnect(gw.ports["h2c"], "/secure-ws/echo", [("authorization", "Bearer " + token())])
    assert ws.status == 200
    ws.send(masked_text_frame(b"jwt ok"))
    assert ws.receive_until(8) == b"\x81\x06jwt ok"
    ws.sock.close()


def test_extended_connect_to_a_route_without_websocket_is_refused(h2c_start, ws_upstream):
    gw = h2c_start()
    before = ws_upstream.handshakes()
    ws = ExtendedConnect(gw.ports["h2c"], "/plain-ws/echo")
    # Never a 2xx, which would tell the client a tunnel is open.
    assert ws.status == 400
    assert ws_upstream.handshakes() == before
    ws.sock.close()


def test_extended_connect_answered_200_without_a_switch_is_a_502(gateway_factory, upstream):
    # The demo upstream answers GET /api/bookings with 200 and no 101.
    gw = gateway_factory(upstream.port, upstream_extra="", extra_routes="""\
  - name: fake-ws
    match: { path_prefix: /api/bookings }
    upstream: booking
    websocket: true
""", listeners_extra="  - name: h2c\n    address: 127.0.0.1:0\n    protocols: [h2c]\n")
    assert ExtendedConnect(gw.ports["h2c"], "/api/bookings").status == 502


BROWSER_TOP = TOP.replace("jwt:\n", "jwt:\n  sources: [header, websocket_protocol]\n")
BROWSER_ROUTES = """\
  - name: push-ws
    match: { path_prefix: /push-ws/ }
    upstream: realtime
    websocket: true
  - name: browser-ws
    match: { path_prefix: /browser-ws/ }
    upstream: realtime
    websocket: true
    auth: required
    allow_token_sources: [websocket_protocol]
  - name: ws-auth
    match: { path_prefix: /secure-ws/ }
    upstream: realtime
    websocket: true
    auth: required
"""


def test_browser_token_in_the_subprotocol_opens_a_tunnel_and_is_not_forwarded(gateway_factory, upstream, ws_upstream):
    extra = f"  realtime:\n    endpoints: [127.0.0.1:{ws_upstream.port}]\n    response_timeout: 2s\n"
    gw = gateway_factory(upstream.port, top_extra=BROWSER_TOP, upstream_extra=extra, extra_routes=BROWSER_ROUTES)
    before = ws_upstream.handshakes()
    # The browser form: the token rides in Sec-WebSocket-Protocol next to `bearer`.
    with connect(wss(gw, "/browser-ws/live"), ssl=tls_context(), subprotocols=["bearer", token()]) as ws:
        assert ws.recv(timeout=5) == "bearer"
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
    # The same form on a route that does not allow it, and no token at all: refused before the upgrade.
    for path, protocols in ((b"/secure-ws/x", b"bearer, " + token().encode()), (b"/browser-ws/x", b"bearer")):
        with socket.create_connection(("127.0.0.1", gw.ports["public"])) as raw:
            tls = tls_context().wrap_socket(raw, server_hostname="localhost")
            tls.sendall(handshake(path, extra=b"Sec-WebSocket-Protocol: " + protocols + b"\r\n"))
            assert read_until(tls, b"\r\n\r\n").startswith(b"HTTP/1.1 401"), path
    assert ws_upstream.handshakes() == before + 1


def test_an_upstream_that_speaks_first_reaches_the_client_at_once(gateway_factory, upstream, ws_upstream):
    # Notifications: the upstream pushes right after its 101 and the client only listens. Its first
    # frame used to wait for the client's first frame (relayed without a flush).
    extra = f"  realtime:\n    endpoints: [127.0.0.1:{ws_upstream.port}]\n    response_timeout: 2s\n"
    gw = gateway_factory(upstream.port, top_extra=BROWSER_TOP, upstream_extra=extra, extra_routes=BROWSER_ROUTES)
    for _ in range(5):
        with connect(wss(gw, "/push-ws/notifications"), ssl=tls_context()) as ws:
            assert ws.recv(timeout=5) == "-"
