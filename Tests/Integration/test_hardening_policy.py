"""Issue 10 items 4, 6, 7 and 8 against the real binaries: dot segments hidden by encoding, per-IP
limits that count refused tokens, a stdout nobody reads, and reloads from several triggers at once."""
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from conftest import GATEWAY, RedisServer, config_text, free_port, raw_request, status_of

# ---------------------------------------------------------------------------------------------
# Item 4: dot segments hidden by encoding

DOT_SEGMENT_FORMS = [
    "/api/..%2Fadmin", "/api/..%2fadmin", "/api/..%5Cadmin", "/api/..%5cadmin", "/api/%2e%2e%2fadmin",
    "/api/%2E%2E%2Fadmin", "/api/%2e%2E/admin", "/api/.%2e/admin", "/api/%2e./admin", "/api/.%2fx",
    "/api/..;/admin", "/api/..;jsessionid=1/admin", "/api/..%3Badmin", "/api/..\\admin", "/api/%2e%2e",
    "/api/x/%2e", "/api/..%2F", "/api/%252e%252e%252fadmin", "/api/..%255cadmin", "/api%2F..%2Fadmin",
    "/api/../admin", "/api/./x",
]


def h2_status(port, path):
    """One HTTP/2 request over TLS with `path` sent as it is (no client-side normalization)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(
                client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
            conn.initiate_connection()
            conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                  (":authority", "localhost")], end_stream=True)
            s.sendall(conn.data_to_send())
            status = None
            while data := s.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                    if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)) and event.stream_id == 1:
                        return status
                s.sendall(conn.data_to_send())
    return status


def test_encoded_dot_segments_refused_before_routing(gateway, upstream):
    before = upstream.stats()["requests"]
    for path in DOT_SEGMENT_FORMS:
        response = raw_request(gateway.ports["plain"], f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status_of(response) == 400, path
        assert b'"bad_request"' in response, path
        assert h2_status(gateway.ports["public"], path) == 400, path
    assert upstream.stats()["requests"] == before  # the upstream never saw one
    # An encoded slash inside a segment is forwarded unchanged (documented rule).
    response = raw_request(gateway.ports["plain"], b"GET /api/a%2Fb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(response) != 400
    assert upstream.stats()["requests"] == before + 1


# ---------------------------------------------------------------------------------------------
# Item 6: per-IP limits count requests authentication refuses

SECRET = "integration-secret-0123456789-abcdefgh"
JWT_AND_LIMITS = f"""\
jwt:
  issuer: barberpro-auth
  audiences: [barberpro-api]
  keys:
    - {{ kid: hs-1, algorithm: HS256, secret: "{SECRET}" }}
rate_limits:
  on_store_error: deny
  policies:
    per_ip: {{ limit: 5, window: 15m, key: client_ip }}
    per_user: {{ limit: 2, window: 15m, key: jwt_subject }}
"""
LIMITED_ROUTES = """\
  - name: secure
    match: { path_prefix: /secure/ }
    upstream: booking
    auth: required
    rate_limits: [per_ip]
  - name: by_user
    match: { path_prefix: /by-user/ }
    upstream: booking
    auth: required
    rate_limits: [per_user]
"""


@pytest.fixture(params=["in_process", "redis"])
def store(request):
    if request.param == "in_process":
        yield ""
        return
    server = RedisServer()
    yield f"redis: {{ url: 'redis://127.0.0.1:{server.port}', timeout: 500ms }}\n"
    server.stop()


def test_refused_tokens_spend_the_per_ip_budget(gateway_factory, upstream, store):
    gw = gateway_factory(upstream.port, top_extra=JWT_AND_LIMITS + store, extra_routes=LIMITED_ROUTES)
    before = upstream.stats()["requests"]
    with httpx.Client(verify=False, timeout=5) as c:
        # A policy keyed by a token claim does not count refused requests.
        for _ in range(4):
            r = c.get(gw.url("/by-user/x"), headers={"authorization": "Bearer not.a.token"})
            assert r.status_code == 401, r.text
        remaining = []
        for i in range(5):
            headers = {"authorization": "Bearer not.a.token"} if i % 2 else {}
            r = c.get(gw.url("/secure/x"), headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "invalid_token", r.text
            remaining.append(int(r.headers["ratelimit-remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        for i in range(3):
            headers = {"authorization": "Bearer not.a.token"} if i % 2 else {}
            r = c.get(gw.url("/secure/x"), headers=headers)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1
        # Health is never counted.
        assert c.get(gw.url("/health")).status_code == 200
    assert upstream.stats()["requests"] == before
    log = gw.access_log()
    secure = [line for line in log if line.get("route") == "secure"]
    assert [line["status"] for line in secure] == [401] * 5 + [429] * 3
    assert [line.get("rate_limit") for line in secure] == ["allowed"] * 5 + ["denied"] * 3
    # HTTP/2 goes through the same dispatch and the same budget.
    assert h2_status(gw.ports["public"], "/secure/x") == 429


def test_refused_token_with_store_down_follows_on_store_error(gateway_factory, upstream):
    dead = free_port()  # nothing listens: every decision fails
    top = JWT_AND_LIMITS + f"redis: {{ url: 'redis://127.0.0.1:{dead}', timeout: 50ms }}\n"
    gw = gateway_factory(upstream.port, top_extra=top, extra_routes=LIMITED_ROUTES)
    with httpx.Client(verify=False, timeout=5) as c:
        r = c.get(gw.url("/secure/x"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "rate_limiter_unavailable", r.text
    allow = gw.config_path.read_text().replace("on_store_error: deny", "on_store_error: allow")
    gw.config_path.write_text(allow)
    assert httpx.post(gw.url("/config/reload", listener="admin"), timeout=10).json()["result"] == "success"
    with httpx.Client(verify=False, timeout=5) as c:
        deadline = time.time() + 5
        while True:
            r = c.get(gw.url("/secure/x"))
            if r.status_code != 503 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token", r.text


# ---------------------------------------------------------------------------------------------
# Item 7: a stdout nobody reads

def metric(admin_port, name):
    text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def h2load_h1(url, n, clients=16):
    out = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", str(clients), url],
                         capture_output=True, text=True, timeout=300)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                  out.stdout)
    assert m, out.stdout + out.stderr
    return [int(x) for x in m.groups()]


def test_stalled_stdout_reader_costs_bounded_memory(certs, upstream, tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text(certs, upstream.port))
    proc = subprocess.Popen([str(GATEWAY), "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        ports = {}
        deadline = time.time() + 30
        while not ("admin" in ports and "plain" in ports) and time.time() < deadline:
            line = proc.stdout.readline().decode()
            assert line, "gateway exited"
            m = re.match(r"gateway: listener (\S+) on .*:(\d+)$", line.strip())
            if m:
                ports[m.group(1)] = int(m.group(2))
        # From here on nobody reads stdout: once the pipe (64 KiB) is full the log writer blocks.
        url = f"http://127.0.0.1:{ports['plain']}/health"
        assert h2load_h1(url, 3000)[3] == 3000
        baseline = rss_kib(proc.pid)
        total, _, done, succeeded, failed, errored = h2load_h1(url, 60000)
        assert (total, done, succeeded, failed, errored) == (60000, 60000, 60000, 0, 0)
        growth_mib = (rss_kib(proc.pid) - baseline) / 1024
        print(f"RSS growth {growth_mib:.1f} MiB")
        assert growth_mib < 96, f"RSS grew {growth_mib:.1f} MiB"
        dropped = metric(ports["admin"], "gateway_access_log_dropped_total")
        print(f"access log lines dropped: {dropped}")
        assert dropped is not None and dropped > 0
        # Still serving after the flood.
        assert httpx.get(url, timeout=5).status_code == 200
        assert proc.poll() is None
        # SIGTERM with the reader still stalled: the drain does not wait on stdout (the log
        # writer gives up on its last batch after 2 s).
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# Item 8: reloads from several triggers at once

def write_atomically(path: Path, text: str):
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_concurrent_reload_triggers_end_consistent_and_each_counted(gateway, upstream):
    base = gateway.config_path.read_text()
    admin = gateway.ports["admin"]
    success = 'gateway_config_reloads_total{result="success"}'

    def count():
        return metric(admin, success) or 0.0

    expected = count()
    hashes = []
    rounds = 4
    for i in range(1, rounds + 1):
        route = f"  - name: round\n    match: {{ path_prefix: /round{i}/ }}\n    upstream: booking\n"
        write_atomically(gateway.config_path, base + route)
        answers = []
        poster = threading.Thread(target=lambda: answers.append(
            httpx.post(f"http://127.0.0.1:{admin}/config/reload", timeout=10)))
        poster.start()
        gateway.proc.send_signal(signal.SIGHUP)
        poster.join(timeout=15)
        assert answers and answers[0].status_code == 200 and answers[0].json()["result"] == "success"
        hashes.append(answers[0].json()["hash"])
        # SIGHUP, POST and the file watcher (one change): three reloads, each counted once.
        expected += 3
        deadline = time.time() + 10
        while count() < expected and time.time() < deadline:
            time.sleep(0.1)
        assert count() == expected
    time.sleep(1.5)  # a watcher poll later: nothing further was counted
    assert count() == expected
    assert metric(admin, 'gateway_config_reloads_total{result="invalid"}') in (None, 0.0)
    assert httpx.get(f"http://127.0.0.1:{admin}/config", timeout=5).json()["hash"] == hashes[-1]
    before = upstream.stats()["requests"]
    with httpx.Client(verify=False, timeout=5) as c:
        r = c.get(gateway.url(f"/round{rounds - 1}/x"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        c.get(gateway.url(f"/round{rounds}/x"))
    assert upstream.stats()["requests"] == before + 1
    assert gateway.proc.poll() is None
