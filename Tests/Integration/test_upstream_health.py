"""Upstream health: active checks, passive ejection, retries within a budget, load balancing."""
import time

import httpx

from conftest import Upstream

HEALTH = """    health_check: { path: /health, interval: 200ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 1 }
"""


def test_killed_endpoint_is_routed_around_and_comes_back(gateway_factory):
    a, b = Upstream(), Upstream()
    try:
        gw = gateway_factory(a.port, endpoints=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], booking_extra=HEALTH)
        with httpx.Client(verify=False, timeout=5) as c:
            for _ in range(10):
                assert c.get(gw.url("/api/bookings")).status_code == 200
            assert a.stats()["requests"] > 0 and b.stats()["requests"] > 0
            port_a = a.port
            a.stop()
            statuses = [c.get(gw.url("/api/bookings")).status_code for _ in range(40)]
            assert statuses == [200] * 40, statuses  # idempotent GETs: no client-visible error
            detailed = httpx.get(gw.url("/health/detailed", listener="admin")).json()
            states = {e["endpoint"]: e["state"] for e in detailed["upstreams"]["booking"]}
            assert states[f"127.0.0.1:{port_a}"] == "down"
            metrics = httpx.get(gw.url("/metrics", listener="admin")).text
            assert f'gateway_upstream_endpoint_up{{upstream="booking",endpoint="127.0.0.1:{port_a}"}} 0' in metrics
            a = Upstream(port=port_a)  # back on the same port
            deadline = time.time() + 10
            while time.time() < deadline and a.stats()["requests"] == 0:
                c.get(gw.url("/api/bookings"))
                time.sleep(0.1)
            assert a.stats()["requests"] > 0, "recovered endpoint never got traffic again"
    finally:
        a.stop()
        b.stop()


def test_retry_budget_holds_under_total_outage(gateway_factory):
    a, b = Upstream(), Upstream()
    try:
        # Both endpoints hang up on every request before answering: each failure may be retried once,
        # but retries stay within 20% of requests (plus the initial bank of 10).
        gw = gateway_factory(a.port, endpoints=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                             booking_extra="    outlier_detection: { consecutive_5xx: 1000 }\n")
        n = 200
        with httpx.Client(verify=False, timeout=5) as c:
            statuses = [c.get(gw.url("/api/close-early")).status_code for _ in range(n)]
        assert all(s in (502, 503) for s in statuses), set(statuses)
        upstream_requests = a.stats()["requests"] + b.stats()["requests"]
        assert n < upstream_requests <= n * 1.2 + 10 + 2, upstream_requests
        metrics = httpx.get(gw.url("/metrics", listener="admin")).text
        retries = [l for l in metrics.splitlines() if l.startswith('gateway_upstream_retries_total{upstream="booking"}')]
        assert retries and 0 < float(retries[0].split()[-1]) <= n * 0.2 + 10
    finally:
        a.stop()
        b.stop()


def test_consecutive_5xx_eject_an_endpoint(gateway_factory):
    a, b = Upstream(), Upstream()
    try:
        gw = gateway_factory(a.port, endpoints=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                             booking_extra="    outlier_detection: { consecutive_5xx: 3, base_ejection_time: 30s }\n")
        with httpx.Client(verify=False, timeout=5) as c:
            # /api/status?code=500 comes back 500 from either endpoint: after 3 in a row each is ejected.
            for _ in range(8):
                c.get(gw.url("/api/status?code=500"))
            r = c.get(gw.url("/api/bookings"))
            assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_upstream"
    finally:
        a.stop()
        b.stop()


def test_least_outstanding_prefers_the_idle_endpoint(gateway_factory):
    import threading
    a, b = Upstream(), Upstream()
    try:
        gw = gateway_factory(a.port, endpoints=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                             booking_extra="    load_balancing: least_outstanding\n")
        slow = []

        def hold():
            with httpx.Client(verify=False, timeout=10) as c:
                slow.append(c.get(gw.url("/api/bookings?delay_ms=1500")).status_code)

        threads = [threading.Thread(target=hold) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.4)
        busy = a if a.stats()["requests"] >= 2 else b
        idle = b if busy is a else a
        before = idle.stats()["requests"]
        with httpx.Client(verify=False, timeout=5) as c:
            for _ in range(5):
                assert c.get(gw.url("/api/bookings")).status_code == 200
        assert idle.stats()["requests"] - before >= 4
        for t in threads:
            t.join()
        assert slow == [200, 200, 200]
    finally:
        a.stop()
        b.stop()
