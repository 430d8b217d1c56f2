"""Why a response happened (the access log's `source` and gateway_requests_total{source}), the access
log's host / user agent / upstream fields, per-endpoint series, and W3C trace context, through the
real gateway binary. Misbehaving upstreams are small socket servers defined here."""
import json
import re
import socket
import threading
import time

import httpx
import jwt
import pytest

from conftest import free_port, metric, raw_request, scrape_metrics

SECRET = "response-source-secret-0123456789-abcd"
TOP = f"""\
cors:
  allowed_origins: [https://barberpro.com.ar]
  allowed_methods: [GET, POST]
  allowed_headers: [authorization]
jwt:
  issuer: barberpro-auth
  audiences: [barberpro-api]
  keys:
    - {{ kid: hs-1, algorithm: HS256, secret: "{SECRET}" }}
rate_limits:
  policies:
    tight: {{ limit: 1, window: 60s, key: client_ip, algorithm: sliding_window }}
"""
ROUTES = """\
  - name: secure
    match: { path_prefix: /secure/ }
    upstream: booking
    auth: required
  - name: limited
    match: { path_prefix: /limited/ }
    upstream: booking
    rate_limits: [tight]
  - name: postonly
    match: { path_prefix: /postonly/, methods: [POST] }
    upstream: booking
  - name: dead
    match: { path_prefix: /dead/ }
    upstream: dead
  - name: fake
    match: { path_prefix: /fake/ }
    upstream: fake
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class FakeUpstream:
    """Answers by path: `/fake/reset` closes after reading the request, `/fake/garbage` is not HTTP,
    `/fake/switch` answers 101, `/fake/midbody` promises 100 bytes and closes after 10."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.running = True
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1].decode()
            if path.startswith("/fake/garbage"):
                conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            elif path.startswith("/fake/switch"):
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
                time.sleep(0.5)
            elif path.startswith("/fake/midbody"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                time.sleep(0.2)
            # `/fake/reset` and everything else: closed without a response.

    def stop(self):
        self.running = False
        self.sock.close()


@pytest.fixture
def fake():
    f = FakeUpstream()
    yield f
    f.stop()


@pytest.fixture
def gw(gateway_factory, upstream, fake):
    dead = free_port()  # nothing listens there
    upstreams = (f"  dead:\n    endpoints: [127.0.0.1:{dead}]\n    connect_timeout: 500ms\n"
                 f"  fake:\n    endpoints: [127.0.0.1:{fake.port}]\n    response_timeout: 3s\n")
    return gateway_factory(upstream.port, top_extra=TOP, upstream_extra=upstreams, extra_routes=ROUTES)


def log_line(gw, predicate, what, deadline=10.0):
    """The one access-log line matching `predicate`, polled until the writer has flushed it."""
    end = time.time() + deadline
    while True:
        lines = [l for l in gw.access_log(wait=0.1) if predicate(l)]
        if lines or time.time() > end:
            break
    assert len(lines) == 1, f"{what}: {len(lines)} lines; last lines {gw.lines[-5:]}"
    return lines[0]


def by_id(gw, request_id):
    return log_line(gw, lambda l: l.get("request_id") == request_id, request_id)


def test_every_gateway_made_response_names_its_source(gw):
    cases = []  # (request id, expected status, expected source)
    with httpx.Client(verify=False, timeout=10) as c:
        def get(rid, path, status, source, method="GET", **kwargs):
            r = c.request(method, gw.url(path), headers={"X-Request-Id": rid, **kwargs.pop("headers", {})}, **kwargs)
            assert r.status_code == status, (rid, r.status_code, r.text)
            cases.append((rid, status, source))
            return r

        get("src-upstream", "/api/bookings", 200, "upstream")
        get("src-noroute", "/nowhere", 404, "gateway:no_route")
        get("src-405", "/postonly/x", 405, "gateway:method_not_allowed")
        get("src-auth", "/secure/x", 401, "gateway:auth")
        bad = jwt.encode({"iss": "barberpro-auth", "aud": "barberpro-api", "sub": "u", "exp": int(time.time()) - 60},
                         SECRET, algorithm="HS256", headers={"kid": "hs-1"})
        get("src-auth-expired", "/secure/x", 401, "gateway:auth", headers={"Authorization": f"Bearer {bad}"})
        get("src-cors", "/api/x", 403, "gateway:cors", method="OPTIONS",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        get("src-preflight", "/api/x", 204, "gateway:cors_preflight", method="OPTIONS",
            headers={"Origin": "https://barberpro.com.ar", "Access-Control-Request-Method": "GET"})
        # The upstream's own 404, told from the gateway's `no_route` one.
        get("src-limit-1", "/limited/x", 404, "upstream")
        get("src-limited", "/limited/x", 429, "gateway:rate_limited")
        get("src-connect", "/dead/x", 502, "gateway:upstream_connect")
        get("src-reset", "/fake/reset", 502, "gateway:upstream_reset")
        get("src-garbage", "/fake/garbage", 502, "gateway:upstream_protocol")
        get("src-switch", "/fake/switch", 502, "gateway:upstream_protocol")
        get("src-timeout", "/api/bookings?delay_ms=2600", 504, "gateway:upstream_timeout")
        get("src-health", "/health/live", 200, "gateway:health")

    # HTTP/2 streams get the same verdicts.
    with httpx.Client(verify=False, http2=True, timeout=10) as c:
        for rid, path, status, source in (("h2-noroute", "/nowhere", 404, "gateway:no_route"),
                                          ("h2-auth", "/secure/x", 401, "gateway:auth"),
                                          ("h2-limited", "/limited/x", 429, "gateway:rate_limited"),
                                          ("h2-connect", "/dead/x", 502, "gateway:upstream_connect"),
                                          ("h2-reset", "/fake/reset", 502, "gateway:upstream_reset"),
                                          ("h2-upstream", "/api/bookings", 200, "upstream")):
            r = c.get(gw.url(path), headers={"X-Request-Id": rid})
            assert r.http_version == "HTTP/2" and r.status_code == status, (rid, r.status_code)
            cases.append((rid, status, source))

    for rid, status, source in cases:
        line = by_id(gw, rid)
        assert (line["status"], line["source"]) == (status, source), line
    # The upstream said 101; the client got 502.
    assert by_id(gw, "src-switch")["upstream_status"] == 101
    assert "upstream_status" not in by_id(gw, "src-connect")

    # Bytes that are no request, and a head that never ends.
    raw = raw_request(gw.ports["plain"], b"GET /a/../b HTTP/1.1\r\nHost: x\r\nX-Request-Id: src-400\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400")
    assert by_id(gw, "src-400")["source"] == "gateway:bad_request"
    raw = raw_request(gw.ports["plain"], b"POST /api/upload HTTP/1.1\r\nHost: x\r\nX-Request-Id: src-413\r\n"
                      b"Content-Length: %d\r\n\r\n" % (3 << 20))
    assert raw.startswith(b"HTTP/1.1 413")
    assert by_id(gw, "src-413")["source"] == "gateway:payload_too_large"
    raw = raw_request(gw.ports["plain"], b"GET /api/bookings HTTP/1.1\r\nHost: x\r\n", timeout=10)
    assert raw.startswith(b"HTTP/1.1 408")
    log_line(gw, lambda l: l["status"] == 408 and l["source"] == "gateway:request_timeout", "header timeout")
    raw = raw_request(gw.ports["http"], b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: src-redirect\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 308")
    assert by_id(gw, "src-redirect")["source"] == "gateway:redirect"

    # gateway_requests_total carries the same source as the log line.
    samples = scrape_metrics(gw)
    assert metric(samples, "gateway_requests_total", route="-", method="GET", status="404", protocol="HTTP/1.1",
                  source="gateway:no_route") >= 1
    assert metric(samples, "gateway_requests_total", route="dead", method="GET", status="502", protocol="HTTP/1.1",
                  source="gateway:upstream_connect") == 1
    assert metric(samples, "gateway_requests_total", route="fake", method="GET", status="502", protocol="HTTP/1.1",
                  source="gateway:upstream_reset") == 1
    assert metric(samples, "gateway_requests_total", route="fake", method="GET", status="502", protocol="HTTP/2",
                  source="gateway:upstream_reset") == 1
    assert metric(samples, "gateway_requests_total", route="limited", method="GET", status="429", protocol="HTTP/1.1",
                  source="gateway:rate_limited") == 1
    assert metric(samples, "gateway_requests_total", route="api", method="GET", status="200", protocol="HTTP/1.1",
                  source="upstream") >= 1


def test_responses_cut_short_say_who_cut_them(gw, fake):
    # The upstream stops after 10 of 100 promised bytes: the client's connection is torn down.
    with pytest.raises(httpx.HTTPError):
        with httpx.Client(verify=False, timeout=10) as c:
            c.get(gw.url("/fake/midbody"), headers={"X-Request-Id": "src-midbody"}).read()
    line = by_id(gw, "src-midbody")
    assert (line["status"], line["source"], line["upstream_status"]) == (200, "gateway:upstream_reset", 200)

    # The client leaves while the upstream is still thinking, on HTTP/1.1 and on HTTP/2.
    s = socket.create_connection(("127.0.0.1", gw.ports["plain"]))
    s.sendall(b"GET /api/bookings?delay_ms=1500 HTTP/1.1\r\nHost: x\r\nX-Request-Id: src-abort\r\n\r\n")
    time.sleep(0.3)
    s.close()
    line = by_id(gw, "src-abort")
    assert (line["status"], line["source"]) == (499, "gateway:client_abort")

    def h2_abort():
        with httpx.Client(verify=False, http2=True, timeout=0.3) as c:
            c.get(gw.url("/api/bookings?delay_ms=1500"), headers={"X-Request-Id": "src-abort-h2"})
    with pytest.raises(httpx.TimeoutException):
        h2_abort()
    line = by_id(gw, "src-abort-h2")
    assert (line["status"], line["source"], line["protocol"]) == (499, "gateway:client_abort", "HTTP/2")


def test_access_log_has_host_user_agent_and_upstream_fields(gw, upstream):
    agent = "BarberProApp/3.1 " + "x" * 1000
    with httpx.Client(verify=False, http2=True, timeout=10) as c:
        r = c.get(gw.url("/api/bookings"), headers={"X-Request-Id": "fields-1", "User-Agent": agent})
        assert r.status_code == 200
    line = by_id(gw, "fields-1")
    assert line["host"] == f"127.0.0.1:{gw.ports['public']}"
    assert line["user_agent"] == agent[:256]
    assert line["upstream"] == f"127.0.0.1:{upstream.port}"
    assert line["upstream_status"] == 200
    assert 0 < line["upstream_s"] <= line["duration_s"]
    assert line["source"] == "upstream"
    assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"]) and line["sampled"] is False
    # HTTP/1.1 too, and only the first of two fields, as sent.
    with httpx.Client(verify=False, http2=False, timeout=10) as c:
        r = c.get(gw.url("/api/bookings"), headers=[("X-Request-Id", "fields-2"), ("User-Agent", "First/1.0 (x)"),
                                                    ("user-agent", "Second/2.0")])
        assert r.status_code == 200
    line = by_id(gw, "fields-2")
    assert line["user_agent"] == "First/1.0 (x)"
    assert line["protocol"] == "HTTP/1.1"


def test_per_endpoint_series_and_pool_gauges(gw, upstream):
    with httpx.Client(verify=False, timeout=10) as c:
        for _ in range(3):
            assert c.get(gw.url("/api/bookings")).status_code == 200
        assert c.get(gw.url("/dead/x")).status_code == 502
    samples = scrape_metrics(gw)
    booking = {"upstream": "booking", "endpoint": f"127.0.0.1:{upstream.port}"}
    assert metric(samples, "gateway_upstream_endpoint_requests_total", **booking, **{"class": "2xx"}) >= 3
    assert metric(samples, "gateway_upstream_endpoint_duration_seconds_count", **booking) >= 3
    assert metric(samples, "gateway_upstream_endpoint_errors_total", **booking, kind="connect") == 0
    dead = [dict(k[1]) for k in samples if k[0] == "gateway_upstream_endpoint_errors_total"
            and dict(k[1])["upstream"] == "dead" and dict(k[1])["kind"] == "connect"]
    assert len(dead) == 1
    assert metric(samples, "gateway_upstream_endpoint_errors_total", **dead[0]) >= 1
    # Keep-alive: the connection that served the requests stays open, and none is busy.
    assert metric(samples, "gateway_upstream_connections", **booking, state="open") >= 1
    assert metric(samples, "gateway_upstream_connections", **booking, state="in_use") == 0
    r = httpx.get(gw.url("/metrics", listener="admin"), headers={"X-Request-Id": "admin-1"}, timeout=5)
    assert r.status_code == 200
    assert by_id(gw, "admin-1")["source"] == "gateway:admin"


def echoed_headers(response):
    return {name.lower(): value for name, value in response.json()["headers"]}


def test_traceparent_is_continued_started_and_forwarded(gw):
    with httpx.Client(verify=False, http2=True, timeout=10) as c:
        # Continued: same trace and flags, the gateway's span as the parent, tracestate along.
        r = c.get(gw.url("/api/echo-headers"), headers={
            "X-Request-Id": "trace-continued", "traceparent": TRACEPARENT, "tracestate": "rojo=00f067aa0ba902b7"})
        sent = echoed_headers(r)
        version, trace_id, parent, flags = sent["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
        assert parent != "00f067aa0ba902b7" and re.fullmatch(r"[0-9a-f]{16}", parent)
        assert sent["tracestate"] == "rojo=00f067aa0ba902b7"
        line = by_id(gw, "trace-continued")
        assert (line["trace_id"], line["span_id"], line["parent_span_id"], line["sampled"]) == (
            TRACE_ID, parent, "00f067aa0ba902b7", True)

        # Not sampled upstream of us: still not sampled.
        r = c.get(gw.url("/api/echo-headers"), headers={"traceparent": TRACEPARENT[:-2] + "00"})
        assert echoed_headers(r)["traceparent"].endswith("-00")
        assert echoed_headers(r)["traceparent"].split("-")[1] == TRACE_ID

        # Absent, and invalid (uppercase hex): a new trace, its tracestate dropped.
        started = []
        for rid, headers in (("trace-absent", {}),
                             ("trace-invalid", {"traceparent": TRACEPARENT.upper(), "tracestate": "rojo=1"})):
            r = c.get(gw.url("/api/echo-headers"), headers={"X-Request-Id": rid, **headers})
            sent = echoed_headers(r)
            version, trace_id, parent, flags = sent["traceparent"].split("-")
            assert version == "00" and flags == "00" and trace_id != TRACE_ID
            assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != "0" * 32
            assert "tracestate" not in sent
            line = by_id(gw, rid)
            assert (line["trace_id"], line["span_id"]) == (trace_id, parent) and "parent_span_id" not in line
            started.append(trace_id)
        assert started[0] != started[1]

        # A gateway-made error names the trace in its body, on both protocols.
        r = c.get(gw.url("/nowhere"), headers={"traceparent": TRACEPARENT})
        assert r.status_code == 404 and r.json()["error"]["trace_id"] == TRACE_ID
    with httpx.Client(verify=False, timeout=10) as c:
        r = c.get(gw.url("/dead/x"), headers={"traceparent": TRACEPARENT, "X-Request-Id": "trace-502"})
        assert r.status_code == 502 and r.json()["error"]["trace_id"] == TRACE_ID
        assert by_id(gw, "trace-502")["trace_id"] == TRACE_ID
        r = c.get(gw.url("/nowhere"))
        trace_id = r.json()["error"]["trace_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != TRACE_ID
