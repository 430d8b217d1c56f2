"""Rate limits through the real gateway: in-process store and a real redis-server shared by two
gateway instances; store failures follow on_store_error."""
import concurrent.futures
import os
import signal
import socket
import subprocess
import time

import httpx
import pytest

from conftest import RedisServer, metric, scrape_metrics

POLICIES = """rate_limits:
  on_store_error: {mode}
  headers: {style}
  exempt_cidrs: [{exempt}]
  policies:
    tight: {{ limit: 5, window: 60s, key: client_ip, algorithm: sliding_window }}
    login: {{ limit: 3, window: 60s, key: [client_ip, route], algorithm: sliding_log }}
"""
ROUTES = """  - name: limited
    match: { path_prefix: /limited/ }
    upstream: booking
    rate_limits: [tight]
  - name: login2
    match: { path_prefix: /login/ }
    upstream: booking
    rate_limits: [login, tight]
"""


@pytest.fixture
def redis():
    r = RedisServer()
    yield r
    r.stop()


def start(gateway_factory, upstream, redis=None, mode="allow", style="draft-6", exempt="", timeout="20ms"):
    top = POLICIES.format(mode=mode, style=style, exempt=exempt)
    if redis:
        top += f"redis: {{ url: 'redis://127.0.0.1:{redis.port}', timeout: {timeout} }}\n"
    return gateway_factory(upstream.port, top_extra=top, extra_routes=ROUTES)


def test_in_process_limit_headers_and_denials_not_forwarded(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    with httpx.Client(verify=False, timeout=5) as c:
        remaining = []
        for _ in range(5):
            r = c.get(gw.url("/limited/x"))
            assert r.headers["ratelimit-limit"] == "5" and r.headers["ratelimit-policy"] == "5;w=60"
            remaining.append(int(r.headers["ratelimit-remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        before = upstream.stats()["requests"]
        r = c.get(gw.url("/limited/x"))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        # Weighted two-window count: the 6th request fits once the previous window's weight has
        # dropped by one request, up to W + W/limit after the burst (here 60 s + 12 s).
        assert 1 <= int(r.headers["retry-after"]) <= 72
        assert upstream.stats()["requests"] == before  # never forwarded
        # Health and other routes are not counted.
        for _ in range(10):
            assert c.get(gw.url("/health")).status_code == 200
    samples = scrape_metrics(gw)
    assert metric(samples, "gateway_ratelimit_decisions_total", policy="tight", decision="allowed") == 5
    assert metric(samples, "gateway_ratelimit_decisions_total", policy="tight", decision="denied") == 1


def test_all_or_nothing_and_tightest_policy(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    with httpx.Client(verify=False, timeout=5) as c:
        codes = [c.get(gw.url("/login/x")).status_code for _ in range(4)]
        assert codes == [404, 404, 404, 429], codes  # the demo upstream's 404 for the first three
        # login denied the 4th: `tight` (shared with /limited/) was charged only 3 times.
        r = c.get(gw.url("/limited/x"))
        assert r.status_code != 429 and r.headers["ratelimit-remaining"] == "1"
    samples = scrape_metrics(gw)
    decisions = lambda policy, decision: metric(samples, "gateway_ratelimit_decisions_total", policy=policy, decision=decision)
    assert (decisions("login", "allowed"), decisions("login", "denied")) == (3, 1)
    # The 4th would have fitted `tight`, but was not counted against it.
    assert (decisions("tight", "allowed"), decisions("tight", "not_counted")) == (4, 1)


def test_ietf_draft10_headers(gateway_factory, upstream):
    gw = start(gateway_factory, upstream, style="ietf-draft-10")
    with httpx.Client(verify=False, timeout=5) as c:
        r = c.get(gw.url("/limited/x"))
        assert r.headers["ratelimit"].startswith('"tight";r=4;t=')
        assert r.headers["ratelimit-policy"] == '"tight";q=5;w=60'


def test_exempt_cidrs(gateway_factory, upstream):
    gw = start(gateway_factory, upstream, exempt="127.0.0.1/32")
    with httpx.Client(verify=False, timeout=5) as c:
        for _ in range(8):
            r = c.get(gw.url("/limited/x"))
            assert r.status_code != 429 and "ratelimit-limit" not in r.headers


def test_exactly_limit_allowed_across_two_gateways_sharing_redis(gateway_factory, upstream, redis):
    # Exactness is about the algorithm, not the deadline: a generous timeout keeps a loaded CI
    # machine from taking the (fail-open) timeout path, which the tests below cover.
    a = start(gateway_factory, upstream, redis, timeout="2s")
    b = start(gateway_factory, upstream, redis, timeout="2s")
    urls = [a.url("/limited/x"), b.url("/limited/x")] * 20

    def hit(url):
        with httpx.Client(verify=False, timeout=5) as c:
            return c.get(url).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(hit, urls))
    assert sum(1 for c in codes if c != 429) == 5, codes
    assert codes.count(429) == 35
    totals = {}
    for gw in (a, b):
        samples = scrape_metrics(gw)
        for decision in ("allowed", "denied"):
            value = samples.get(("gateway_ratelimit_decisions_total", frozenset({("policy", "tight"), ("decision", decision)})), 0)
            totals[decision] = totals.get(decision, 0) + value
        assert metric(samples, "gateway_redis_errors_total") == 0
    assert totals == {"allowed": 5, "denied": 35}, totals
    keys = redis.cli("--scan", "--pattern", "gw:rl:*").split()
    assert keys
    for key in keys:
        assert int(redis.cli("PTTL", key)) > 0, key


def test_redis_down_fail_open_then_recovers(gateway_factory, upstream, redis):
    gw = start(gateway_factory, upstream, redis, mode="allow")
    with httpx.Client(verify=False, timeout=5) as c:
        # The first decisions may beat the script load on a loaded machine (and fail open).
        deadline = time.time() + 5
        while time.time() < deadline and "ratelimit-remaining" not in c.get(gw.url("/limited/x")).headers:
            time.sleep(0.05)
        assert "ratelimit-remaining" in c.get(gw.url("/limited/x")).headers
        port = redis.port
        errors_before = metric(scrape_metrics(gw), "gateway_redis_errors_total")
        redis.stop()
        for _ in range(3):
            start_t = time.time()
            r = c.get(gw.url("/limited/x"))
            assert r.status_code == 404 and "ratelimit-limit" not in r.headers  # demo upstream's own 404
            assert r.json() == {"error": "not found in demo upstream"}
            assert time.time() - start_t < 1.0
        # One store error per request that failed open.
        assert metric(scrape_metrics(gw), "gateway_redis_errors_total") == errors_before + 3
        # Back on the same port: limiting resumes.
        redis.proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            r = c.get(gw.url("/limited/x"))
            if "ratelimit-limit" in r.headers:
                break
            time.sleep(0.1)
        assert "ratelimit-limit" in r.headers


def test_redis_down_fail_closed(gateway_factory, upstream, redis):
    gw = start(gateway_factory, upstream, redis, mode="deny")
    redis.stop()
    with httpx.Client(verify=False, timeout=5) as c:
        r = c.get(gw.url("/limited/x"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "rate_limiter_unavailable"
        assert r.headers["retry-after"] == "1"
    assert metric(scrape_metrics(gw), "gateway_redis_errors_total") == 1


def test_slow_redis_takes_the_timeout_path(gateway_factory, upstream, redis):
    gw = start(gateway_factory, upstream, redis, mode="deny")
    with httpx.Client(verify=False, timeout=5) as c:
        deadline = time.time() + 5
        while time.time() < deadline and c.get(gw.url("/limited/x")).status_code == 503:
            time.sleep(0.05)  # until the script is loaded and Redis answers in time
        # Sent on a raw socket so Redis is busy before the request below (no client start-up race).
        errors_before = metric(scrape_metrics(gw), "gateway_redis_errors_total")
        blocker = socket.create_connection(("127.0.0.1", redis.port))
        blocker.sendall(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$1\r\n1\r\n")
        time.sleep(0.1)
        start_t = time.time()
        r = c.get(gw.url("/limited/x"))
        assert r.status_code == 503 and time.time() - start_t < 0.9  # the store timeout, not Redis's 1 s sleep
        assert r.json()["error"]["code"] == "rate_limiter_unavailable"
        blocker.close()
    assert metric(scrape_metrics(gw), "gateway_redis_errors_total") == errors_before + 1


def test_health_detailed_reports_the_store(gateway_factory, upstream, redis):
    gw = start(gateway_factory, upstream, redis, timeout="2s")
    with httpx.Client(verify=False, timeout=5) as c:
        c.get(gw.url("/limited/x"))
    detail = httpx.get(gw.url("/health/detailed", listener="admin")).json()["redis"]
    assert detail["state"] == "up" and detail["connections"] >= 1 and detail["last_decision_us"] >= 0
    local = start(gateway_factory, upstream)
    assert httpx.get(local.url("/health/detailed", listener="admin")).json()["redis"] == {"state": "in_process"}
