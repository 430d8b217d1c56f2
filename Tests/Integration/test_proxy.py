"""The TLS HTTP/1.1 proxy path through the real gateway to the real demo upstream."""
import hashlib
import json
import subprocess
import threading
import re
import time

import httpx
import pytest

from conftest import raw_request, status_of


def client(**kw):
    return httpx.Client(verify=False, timeout=10, **kw)


def test_get_through_tls_proxy_with_curl(gateway):
    out = subprocess.run(["curl", "-sk", "-i", "--http1.1", gateway.url("/api/bookings")],
                         capture_output=True, check=True).stdout.decode()
    assert out.startswith("HTTP/1.1 200")
    head, body = out.split("\r\n\r\n", 1)
    assert json.loads(body)["bookings"][0]["id"] == "bk_1"
    assert "x-request-id:" in head.lower()
    assert "strict-transport-security: max-age=31536000" in head.lower()


def test_post_body_round_trips_with_httpx(gateway):
    with client() as c:
        payload = {"barber": "b_1", "starts_at": "2026-11-27T10:00-03:00", "note": "ñandú" * 100}
        r = c.post(gateway.url("/api/bookings"), json=payload)
        assert r.status_code == 201
        assert r.json() == payload
        assert r.headers["x-demo-upstream"] == "booking"


def test_forwarding_headers_and_hop_by_hop_removal(gateway):
    with client() as c:
        r = c.get(gateway.url("/api/echo-headers?x=1"), headers={
            "X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6", "Forwarded": "for=6.6.6.6",
            "CF-Connecting-IP": "6.6.6.6", "X-Request-Id": "client-id.42",
            "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "drop me", "Keep-Alive": "timeout=5",
            "TE": "trailers", "Upgrade": "websocket", "X-Custom": "kept"})
        echoed = r.json()
        headers = {}
        for name, value in echoed["headers"]:
            headers.setdefault(name.lower(), []).append(value)
        assert headers["x-forwarded-for"] == ["127.0.0.1"]
        assert headers["x-forwarded-proto"] == ["https"]
        assert headers["x-forwarded-host"] == [f"127.0.0.1:{gateway.ports['public']}"]
        assert headers["x-request-id"] == ["client-id.42"]
        assert r.headers["x-request-id"] == "client-id.42"
        assert headers["x-custom"] == ["kept"]
        for gone in ["x-real-ip", "forwarded", "cf-connecting-ip", "x-secret-hop", "keep-alive", "te", "upgrade", "connection"]:
            assert gone not in headers, gone
        assert echoed["uri"] == "/api/echo-headers?x=1"


@pytest.mark.parametrize("http2", [False, True])
def test_each_request_on_a_connection_forwards_its_own_target_and_host(http2, gateway):
    """A connection reuses the last request's target and host text while the bytes repeat
    (`RecentText`): requests whose target or host changes to other bytes of the same length, and
    back, must each reach the upstream as sent."""
    sequence = [("aa", "aa.example"), ("bb", "bb.example"), ("bb", "aa.example"), ("aa", "bb.example"),
                ("aa", "aa.example"), ("a", "a.example"), ("aa", "aa.example")]
    with client(http2=http2) as c:
        for query, host in sequence:
            r = c.get(gateway.url(f"/api/echo-headers?q={query}"), headers={"Host": host})
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            echoed = r.json()
            assert echoed["uri"] == f"/api/echo-headers?q={query}", (query, host)
            forwarded_host = [value for name, value in echoed["headers"] if name.lower() == "x-forwarded-host"]
            assert forwarded_host == [host], (query, host)


def test_invalid_client_request_id_is_replaced(gateway):
    with client() as c:
        r = c.get(gateway.url("/api/echo-headers"), headers={"X-Request-Id": "bad id with spaces"})
        ids = [v for n, v in r.json()["headers"] if n.lower() == "x-request-id"]
        assert ids and ids[0] != "bad id with spaces" and r.headers["x-request-id"] == ids[0]


def test_keep_alive_reuses_upstream_connections(gateway, upstream):
    before = upstream.stats()["connections"]
    with client() as c:
        for _ in range(50):
            assert c.get(gateway.url("/api/bookings")).status_code == 200
    after = upstream.stats()["connections"]
    # One client connection doing sequential requests needs one upstream connection.
    assert after - before <= 2, (before, after)


def test_errors_404_405(gateway, upstream):
    with client() as c:
        before = upstream.stats()["requests"]
        r = c.get(gateway.url("/nothing/here"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
        assert upstream.stats()["requests"] == before  # answered by the gateway
        # /api/auth/login: the POST-only `login` route matches the path, but `api` takes any method,
        # so the 404 is the demo upstream's own, passed through.
        r = c.get(gateway.url("/api/auth/login"))
        assert r.status_code == 404
        assert r.json() == {"error": "not found in demo upstream"}
        assert upstream.stats()["requests"] == before + 1


def test_405_with_allow(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, extra_routes="  - name: admin-only\n    match: { path_prefix: /admin, methods: [GET, POST] }\n    upstream: booking\n")
    with client() as c:
        r = c.put(gw.url("/admin/x"))
        assert r.status_code == 405
        assert r.headers["allow"] == "GET, POST"
        assert r.json()["error"]["code"] == "method_not_allowed"


def test_413_content_length_and_chunked(gateway, upstream):
    before = upstream.stats()["requests"]
    with client() as c:
        r = c.post(gateway.url("/api/upload"), content=b"x" * (3 * 1024 * 1024))
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        # Refused from its Content-Length: never reached the upstream.
        assert upstream.stats()["requests"] == before

        def gen():
            for _ in range(48):
                yield b"y" * 65536
        r = c.post(gateway.url("/api/upload"), content=gen())
        assert r.status_code == 413


def test_431_headers_too_large(gateway):
    with client() as c:
        r = c.get(gateway.url("/api/bookings"), headers={"X-Big": "a" * 10000})
        assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"


def test_408_slow_headers(gateway):
    start = time.time()
    out = raw_request(gateway.ports["plain"], b"GET /api/bookings HTTP/1.1\r\nHost: x\r\n", timeout=5)
    assert status_of(out) == 408
    assert b'"code":"request_timeout"' in out
    assert time.time() - start < 4


def trickle_header_lines(s, seconds=4):
    """Sends a header line every 0.3 s until the gateway closes (or `seconds` pass); returns what it
    answered and when the trickle started."""
    start = time.time()
    s.settimeout(0.3)
    data = b""
    while time.time() - start < seconds:
        try:
            s.sendall(b"X-Slow: 1\r\n")
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        except TimeoutError:
            pass
        except OSError:
            # Closed, or reset: the gateway closed on bytes we kept sending and the kernel may turn
            # its 408 into a reset. Being cut off in time is what the callers test.
            break
    return data, start


def test_slowloris_is_cut_off(gateway):
    import socket
    s = socket.create_connection(("127.0.0.1", gateway.ports["plain"]))
    s.sendall(b"GET /api/bookings HTTP/1.1\r\n")
    try:
        data, start = trickle_header_lines(s)
    finally:
        s.close()
    assert time.time() - start < 3.5, "slowloris connection held open"
    assert data == b"" or data.startswith(b"HTTP/1.1 408")


def test_slowloris_on_a_kept_alive_connection_is_cut_off_by_client_header(gateway):
    """The second request's first bytes restart the client_header clock (1 s here), not the idle
    one (5 s): a client that trickles it after a normal first request is cut off in time too."""
    import socket
    s = socket.create_connection(("127.0.0.1", gateway.ports["plain"]), timeout=5)
    try:
        s.sendall(b"GET /api/bookings HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first:
            first += s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        length = int(re.search(rb"(?i)content-length: (\d+)", first).group(1))
        body = first.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            body += s.recv(4096)
        s.sendall(b"GET /api/bookings HTTP/1.1\r\n")
        data, start = trickle_header_lines(s)
    finally:
        s.close()
    assert time.time() - start < 3, "the trickled second request was held open past client_header"
    assert data == b"" or data.startswith(b"HTTP/1.1 408")


def test_502_when_upstream_refuses(gateway_factory, certs):
    from conftest import free_port
    dead = free_port()
    gw = gateway_factory(dead)
    with client() as c:
        r = c.get(gw.url("/api/bookings"))
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
        # Just failed: the only endpoint is out of rotation → 503.
        r = c.get(gw.url("/api/bookings"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_upstream"
        r = c.get(gw.url("/health/ready", listener="admin"))
        assert r.status_code == 503 and "booking" in r.text


def test_second_endpoint_takes_over(gateway_factory, upstream):
    from conftest import free_port
    gw = gateway_factory(upstream.port, endpoints=[f"127.0.0.1:{free_port()}", f"127.0.0.1:{upstream.port}"])
    with client() as c:
        for _ in range(6):
            assert c.get(gw.url("/api/bookings")).status_code == 200


def test_502_on_bad_upstream_framing_and_connection_not_reused(gateway, upstream):
    with client() as c:
        r = c.get(gateway.url("/api/bad-framing"))
        assert r.status_code == 502
        # A bad chunk size after a good head: the head may already be on its way to the client,
        # so the client sees a 502 or a cut connection, never a clean 200.
        try:
            r = c.get(gateway.url("/api/bad-chunk"))
            assert r.status_code == 502
        except httpx.HTTPError:
            pass
        assert c.get(gateway.url("/api/bookings")).status_code == 200


@pytest.mark.parametrize("kind", ["te-tab", "folded", "bare-lf", "chunk-ext"])
def test_upstream_response_outside_the_strict_grammar_is_502(kind, gateway, upstream):
    """The gateway reads upstream responses in the strict RFC 9112 grammar: a framing field llhttp
    and RFC 9110 read differently (chunked<HTAB>), obs-fold, bare LF, a chunk extension. Never a
    200 made of a body read one way, and the next request gets a fresh connection."""
    with client() as c:
        try:
            r = c.get(gateway.url(f"/api/odd-response?kind={kind}"))
            # A chunk extension comes after the head: the head may be on its way, then cut.
            assert r.status_code == 502, (kind, r.status_code, r.text)
        except httpx.HTTPError:
            assert kind == "chunk-ext"
        assert c.get(gateway.url("/api/bookings")).status_code == 200


def test_interim_upstream_response_is_dropped(gateway):
    with client() as c:
        r = c.get(gateway.url("/api/odd-response?kind=interim"))
        assert r.status_code == 200 and r.text == "{}"
        assert "link" not in r.headers


def test_504_when_upstream_is_slow(gateway):
    with client() as c:
        start = time.time()
        r = c.get(gateway.url("/api/bookings?delay_ms=4000"))
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        assert 1.5 < time.time() - start < 3.5


def test_delay_within_timeout_passes(gateway):
    with client() as c:
        r = c.get(gateway.url("/api/bookings?delay_ms=300"))
        assert r.status_code == 200


def test_health_endpoints(gateway):
    with client() as c:
        assert c.get(gateway.url("/health")).json() == {"status": "ok"}
        assert c.get(gateway.url("/health/live")).status_code == 200
        assert c.get(gateway.url("/health/ready")).status_code == 200
        # detailed only on admin
        assert c.get(gateway.url("/health/detailed")).status_code == 404
        d = c.get(gateway.url("/health/detailed", listener="admin")).json()
        assert d["status"] == "ready" and "config_hash" in d and "booking" in d["upstreams"]
        assert c.get(gateway.url("/api/bookings", listener="admin")).status_code == 404


def test_redirect_listener(gateway):
    with client() as c:
        r = c.post(gateway.url("/api/bookings?x=1", listener="http"), headers={"Host": "api.barberpro.com.ar"})
        assert r.status_code == 308
        assert r.headers["location"] == f"https://api.barberpro.com.ar:{gateway.ports['public']}/api/bookings?x=1"
        assert c.get(gateway.url("/health", listener="http")).status_code == 200


def test_pipelined_requests_answered_in_order(gateway):
    reqs = b"".join(
        f"GET /api/echo-headers?n={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(5)
    ) + b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw_request(gateway.ports["plain"], reqs)
    positions = [out.find(f"n={i}".encode()) for i in range(5)]
    assert all(p > 0 for p in positions) and positions == sorted(positions)
    assert out.count(b"HTTP/1.1 200 OK") == 6


def test_sigterm_lets_in_flight_request_finish(gateway_factory, upstream):
    gw = gateway_factory(upstream.port)
    result = {}

    def slow():
        with client() as c:
            result["r"] = c.get(gw.url("/api/bookings?delay_ms=1500"))

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.4)
    gw.proc.send_signal(15)
    t.join(timeout=10)
    assert result["r"].status_code == 200
    assert gw.proc.wait(timeout=10) == 0


def test_http10_client(gateway):
    out = raw_request(gateway.ports["plain"], b"GET /api/bookings HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.0 200") and out.endswith(b"}]}")


def test_stalled_request_body_is_cut_off(gateway, upstream):
    # 10 of 100 announced bytes, then silence: after `timeouts.idle` (5s here) the gateway answers 408
    # and drops the upstream request instead of holding both connections forever.
    import socket
    start = time.time()
    s = socket.create_connection(("127.0.0.1", gateway.ports["plain"]), timeout=10)
    s.sendall(b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except socket.timeout:
        pass
    s.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert 4.5 < time.time() - start < 8


@pytest.mark.parametrize("protocol", ["--http1.1", "--http2"])
def test_hostile_upstream_response_fields_are_not_passed_on(protocol, gateway):
    """The response rewrite writes the client's head from the upstream's in one pass (HTTP/1.1
    bytes, HTTP/2 header fields): what it drops and keeps is the same on both protocols."""
    out = subprocess.run(["curl", "-sk", protocol, "-D", "-", "-o", "/dev/null", gateway.url("/api/hostile-headers")],
                         capture_output=True, check=True).stdout.decode()
    lines = [line for line in out.split("\r\n")[1:] if line]
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields.setdefault(name.lower(), []).append(value.strip())
    assert out.startswith("HTTP/1.1 200" if protocol == "--http1.1" else "HTTP/2 200"), out
    for gone in ["x-upstream-secret", "keep-alive", "proxy-connection", "upgrade"]:
        assert gone not in fields, (gone, out)
    assert fields.get("connection", []) in ([], ["keep-alive"]), out
    [request_id] = fields["x-request-id"]
    assert request_id != "forged-by-upstream"
    assert fields["strict-transport-security"] == ["max-age=1"], out
    assert fields["x-kept"] == ["padded value"], out
    assert fields["content-length"] == ["2"], out


def test_hostile_client_head_at_the_size_limit_is_forwarded_rewritten(gateway):
    """A client head close to the header limit, full of what the rewrite drops or rewrites (many
    `Connection` tokens naming fields, spoofed forwarding fields, hop-by-hop fields, long values):
    the upstream head written straight from it has exactly the kept fields, and the gateway lives."""
    # About 7 KiB of the fixture's 8 KiB limit.
    fields = [("Connection", "keep-alive, " + ", ".join(f"X-Drop-{i}" for i in range(20)))]
    fields += [(f"X-Drop-{i}", "d" * 60) for i in range(20)]
    fields += [("X-Forwarded-For", "6.6.6.6, " * 30 + "7.7.7.7"), ("Forwarded", "for=6.6.6.6"), ("Keep-Alive", "timeout=9")]
    fields += [(f"X-Keep-{i}", "k" * 150) for i in range(30)]
    with client() as c:
        r = c.get(gateway.url("/api/echo-headers"), headers=fields)
        assert r.status_code == 200, r.text[:200]
        names = [n.lower() for n, _ in r.json()["headers"]]
        assert [n for n in names if n.startswith("x-keep-")] == [f"x-keep-{i}" for i in range(30)]
        assert not [n for n in names if n.startswith("x-drop-") or n in ("forwarded", "keep-alive", "connection")]
        assert dict((n.lower(), v) for n, v in r.json()["headers"])["x-forwarded-for"] == "127.0.0.1"
        assert c.get(gateway.url("/api/bookings")).status_code == 200
