"""HTTP/2 through nghttp2: real clients (curl, nghttp, h2load, httpx) and a raw-frame suite."""
import socket
import ssl
import struct
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest

from conftest import raw_request, status_of

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def tls_socket(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2"
    return s


class RawH2:
    """A deliberately permissive HTTP/2 client: it sends what we tell it, valid or not."""

    def __init__(self, port):
        self.sock = tls_socket(port)
        cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                        normalize_outbound_headers=False, validate_inbound_headers=False,
                                        header_encoding=None)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def events(self, until, timeout=5.0):
        """Reads until `until(events)` is true or the connection closes; returns all events."""
        seen = []
        deadline = time.time() + timeout
        self.sock.settimeout(0.5)
        while time.time() < deadline:
            if until(seen):
                break
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                seen.append("closed")
                break
            if not data:
                seen.append("closed")
                break
            try:
                seen.extend(self.conn.receive_data(data))
            except Exception as e:  # a protocol violation by the server would land here
                seen.append(e)
                break
            self.flush()
        return seen

    def request(self, path, method="GET", headers=(), end_stream=True, authority="localhost"):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)] + list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=end_stream)
        self.flush()
        return sid

    def close(self):
        self.sock.close()


def stream_outcome(events, sid):
    for e in events:
        if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
            return int(dict(e.headers)[b":status"])
        if isinstance(e, h2.events.StreamReset) and e.stream_id == sid:
            return "reset"
        if isinstance(e, h2.events.ConnectionTerminated):
            return "goaway"
        if e == "closed":
            return "closed"
    return None


def done(sid):
    return lambda evs: stream_outcome(evs, sid) is not None


def test_curl_http2_get_and_post(gateway):
    out = subprocess.run(["curl", "-sk", "--http2", "-i", gateway.url("/api/bookings")], capture_output=True, check=True).stdout
    assert out.startswith(b"HTTP/2 200")
    out = subprocess.run(["curl", "-sk", "--http2", "-X", "POST", "-H", "content-type: text/plain", "--data-binary", "ñandú",
                          gateway.url("/api/bookings")], capture_output=True, check=True).stdout
    assert out == "ñandú".encode()


def test_h1_and_h2_give_identical_bodies_and_statuses(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, extra_routes="  - name: admin-only\n    match: { path_prefix: /admin, methods: [GET] }\n    upstream: booking\n")
    cases = [("GET", "/api/bookings", {}, None), ("GET", "/nothing", {}, None), ("PUT", "/admin/x", {}, None),
             ("POST", "/api/upload", {}, b"x" * (3 * 1024 * 1024)), ("GET", "/api/bookings", {"x-big": "a" * 10000}, None),
             ("GET", "/api/status?code=418", {}, None), ("GET", "/api/bookings?delay_ms=3000", {}, None)]
    with httpx.Client(verify=False, timeout=10) as h1, httpx.Client(verify=False, timeout=10, http2=True) as h2c:
        for method, path, headers, body in cases:
            a = h1.request(method, gw.url(path), headers=headers, content=body)
            b = h2c.request(method, gw.url(path), headers=headers, content=body)
            assert b.http_version == "HTTP/2"
            assert a.status_code == b.status_code, path
            if a.headers.get("content-type") == "application/json" and b'"request_id"' in a.content:
                strip = lambda r: r.json()["error"]["code"]
                assert strip(a) == strip(b)
            else:
                assert a.content == b.content, path


def test_many_concurrent_streams_to_different_upstreams(gateway_factory, upstream):
    from conftest import Upstream
    other = Upstream()
    try:
        gw = gateway_factory(upstream.port, upstream_extra=f"  other:\n    endpoints: [127.0.0.1:{other.port}]\n",
                             extra_routes="  - name: other\n    match: { path_prefix: /other/ }\n    upstream: other\n")
        # /other/... reaches the second upstream (which answers 404 for unknown paths, from itself).
        out = subprocess.run(["h2load", "-n", "2000", "-c", "2", "-m", "50", gw.url("/api/bookings")],
                             capture_output=True, text=True, timeout=60).stdout
        assert "2000 succeeded" in out and "2000 2xx" in out, out
        before_other = other.stats()["requests"]
        out = subprocess.run(["nghttp", "-n", "-s", "-m", "20", gw.url("/api/barbers"), gw.url("/other/x")],
                             capture_output=True, text=True, timeout=60).stdout
        assert other.stats()["requests"] - before_other == 20
    finally:
        other.stop()


def test_large_bodies_both_ways_and_slow_reader(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, max_body="512MiB")
    chunk = b"z" * 262144
    with httpx.Client(verify=False, timeout=60, http2=True) as c:
        r = c.post(gw.url("/api/upload"), content=(chunk for _ in range(256)))  # 64 MiB, no length: chunked upstream
        assert r.http_version == "HTTP/2" and r.json()["bytes"] == 64 * 1024 * 1024
        baseline = gw.rss_kib()
        peak = baseline
        received = 0
        size = 256 * 1024 * 1024
        with c.stream("GET", gw.url(f"/api/download?bytes={size}")) as resp:
            start = time.time()
            for part in resp.iter_bytes(65536):
                received += len(part)
                if time.time() - start < 2:
                    time.sleep(0.002)
                    peak = max(peak, gw.rss_kib())
        assert received == size
        assert (peak - baseline) / 1024 < 64, f"RSS grew {(peak - baseline) / 1024:.0f} MiB"


def test_reset_mid_download_and_mid_upload_leaks_no_upstream_connection(gateway, upstream):
    with httpx.Client(verify=False, timeout=10, http2=True) as c:
        c.get(gateway.url("/api/bookings"))
    time.sleep(0.2)
    before = upstream.stats()["open_connections"]
    raw = RawH2(gateway.ports["public"])
    for _ in range(5):
        sid = raw.request(f"/api/download?bytes={64 * 1024 * 1024}")
        raw.events(lambda evs: any(isinstance(e, h2.events.DataReceived) for e in evs), timeout=3)
        raw.conn.reset_stream(sid)
        raw.flush()
    for _ in range(5):
        sid = raw.request("/api/upload", method="POST", end_stream=False)
        raw.conn.send_data(sid, b"u" * 16384)
        raw.flush()
        time.sleep(0.05)
        raw.conn.reset_stream(sid)
        raw.flush()
    time.sleep(1)
    after = upstream.stats()["open_connections"]
    raw.close()
    assert after <= before + 1, (before, after)  # at most one pooled connection more, never ten


@pytest.mark.parametrize("name,headers,end_stream", [
    ("uppercase_name", [("X-Upper", "a")], True),
    ("cr_in_value", [("x-a", "a\rb")], True),
    ("lf_in_value", [("x-a", "a\nb")], True),
    ("nul_in_value", [("x-a", "a\x00b")], True),
    ("connection_header", [("connection", "keep-alive")], True),
    ("transfer_encoding", [("transfer-encoding", "chunked")], True),
    ("te_not_trailers", [("te", "gzip")], True),
    ("cl_with_end_stream", [("content-length", "5")], True),
])
def test_malformed_stream_is_refused_and_not_forwarded(name, headers, end_stream, gateway, upstream):
    before = upstream.stats()["requests"]
    raw = RawH2(gateway.ports["public"])
    sid = raw.request("/api/echo-headers", method="POST", headers=headers, end_stream=end_stream)
    outcome = stream_outcome(raw.events(done(sid)), sid)
    raw.close()
    assert outcome in ("reset", 400, "goaway"), outcome
    assert upstream.stats()["requests"] == before, f"{name} reached the upstream"


@pytest.mark.parametrize("path", ["api/relative", "", "/api/../admin", "/api/a\rb"])
def test_bad_path_never_forwarded(path, gateway, upstream):
    before = upstream.stats()["requests"]
    raw = RawH2(gateway.ports["public"])
    sid = raw.request(path)
    outcome = stream_outcome(raw.events(done(sid)), sid)
    raw.close()
    assert outcome in ("reset", 400, "goaway"), outcome
    assert upstream.stats()["requests"] == before


def test_content_length_mismatch_with_data(gateway, upstream):
    before = upstream.stats()["requests"]
    raw = RawH2(gateway.ports["public"])
    sid = raw.request("/api/upload", method="POST", headers=[("content-length", "5")], end_stream=False)
    raw.conn.send_data(sid, b"0123456789", end_stream=True)
    raw.flush()
    outcome = stream_outcome(raw.events(done(sid)), sid)
    raw.close()
    assert outcome in ("reset", 400, 502, "goaway"), outcome


def test_many_tiny_headers_bounded(gateway):
    raw = RawH2(gateway.ports["public"])
    sid = raw.request("/api/bookings", headers=[(f"x-{i}", "v") for i in range(2000)])
    outcome = stream_outcome(raw.events(done(sid)), sid)
    raw.close()
    assert outcome in (431, "reset", "goaway"), outcome


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def raw_tls(port):
    s = tls_socket(port)
    s.sendall(PREFACE + frame(4, 0, 0))  # preface + empty SETTINGS
    return s


def read_until_closed(s, timeout=5):
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (socket.timeout, ConnectionResetError, ssl.SSLError, OSError):
        pass
    return data


def goaway_code(data):
    """Error code of the first GOAWAY frame in a raw server byte stream, or None."""
    i = 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        if data[i + 3] == 7 and i + 9 + 8 <= len(data):
            return int.from_bytes(data[i + 13:i + 17], "big")
        i += 9 + length
    return None


def test_bad_preface_gets_closed(gateway):
    s = tls_socket(gateway.ports["public"])
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 20)
    data = read_until_closed(s)
    assert goaway_code(data) is not None or data == b""


def test_continuation_flood_is_cut_off(gateway):
    s = raw_tls(gateway.ports["public"])
    # HEADERS without END_HEADERS, then endless CONTINUATION frames.
    s.sendall(frame(1, 0, 1, b"\x82"))
    try:
        for _ in range(200):
            s.sendall(frame(9, 0, 1, b"\x40\x01a\x01b"))
    except OSError:
        pass
    data = read_until_closed(s)
    assert goaway_code(data) is not None


def test_rapid_reset_is_cut_off(gateway):
    s = raw_tls(gateway.ports["public"])
    # :method GET, :scheme https, :path /, :authority localhost — HPACK static + literal.
    block = b"\x82\x87\x84\x41\x09localhost"
    try:
        for i in range(0, 2000):
            sid = 2 * i + 1
            s.sendall(frame(1, 0x05, sid, block) + frame(3, 0, sid, b"\x00\x00\x00\x08"))
    except OSError:
        pass
    data = read_until_closed(s)
    assert goaway_code(data) is not None


@pytest.mark.parametrize("flood", ["settings", "ping", "empty_data"])
def test_control_frame_floods_are_cut_off(flood, gateway):
    s = raw_tls(gateway.ports["public"])
    try:
        if flood == "settings":
            for _ in range(20000):
                s.sendall(frame(4, 0, 0))
        elif flood == "ping":
            for _ in range(20000):
                s.sendall(frame(6, 0, 0, b"12345678"))
        else:
            s.sendall(frame(1, 0x04, 1, b"\x83\x87\x84\x41\x09localhost"))  # POST, no END_STREAM
            for _ in range(2000):
                s.sendall(frame(0, 0, 1))
    except OSError:
        pass
    data = read_until_closed(s)
    assert goaway_code(data) is not None or data.endswith(b"") and len(data) < 20000 * 17


def test_gateway_survives_abuse(gateway):
    test_rapid_reset_is_cut_off(gateway)
    test_continuation_flood_is_cut_off(gateway)
    with httpx.Client(verify=False, timeout=5, http2=True) as c:
        assert c.get(gateway.url("/api/bookings")).status_code == 200


def test_h2c_prior_knowledge_on_plain_listener(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, listeners_extra="  - name: cleartext\n    address: 127.0.0.1:0\n    protocols: [h2c, http/1.1]\n")
    port = gw.ports.get("cleartext")
    assert port, gw.ports
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-i", f"http://127.0.0.1:{port}/api/bookings"],
                         capture_output=True, check=True).stdout
    assert out.startswith(b"HTTP/2 200")
    assert status_of(raw_request(port, b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


def test_goaway_on_sigterm_lets_streams_finish(gateway_factory, upstream):
    gw = gateway_factory(upstream.port)
    proc = subprocess.Popen(["curl", "-sk", "--http2", "-o", "-", "-w", "\n%{http_code} %{http_version}",
                             gw.url("/api/bookings?delay_ms=1500")], stdout=subprocess.PIPE)
    time.sleep(0.5)
    gw.proc.send_signal(15)
    out = proc.communicate(timeout=10)[0]
    assert out.endswith(b"200 2"), out[-200:]
    assert b"bk_1" in out
    assert gw.proc.wait(timeout=10) == 0
