"""Metrics on the admin listener and the JSON access log, through the real gateway."""
import re

import httpx


def scrape(gw):
    text = httpx.get(gw.url("/metrics", listener="admin"), timeout=5).text
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return text, values


def test_metrics_move_as_requests_pass(gateway):
    _, before = scrape(gateway)
    key = 'gateway_requests_total{route="api",method="GET",status="200",protocol="HTTP/1.1",source="upstream"}'
    key2 = 'gateway_requests_total{route="api",method="GET",status="200",protocol="HTTP/2",source="upstream"}'
    with httpx.Client(verify=False) as c:
        for _ in range(3):
            assert c.get(gateway.url("/api/bookings")).status_code == 200
    with httpx.Client(verify=False, http2=True) as c:
        for _ in range(2):
            assert c.get(gateway.url("/api/bookings")).status_code == 200
        assert c.get(gateway.url("/nowhere")).status_code == 404
    text, after = scrape(gateway)
    assert after[key] - before.get(key, 0) == 3
    assert after[key2] - before.get(key2, 0) == 2
    assert after['gateway_requests_total{route="-",method="GET",status="404",protocol="HTTP/2",source="gateway:no_route"}'] >= 1
    assert after['gateway_request_duration_seconds_count{route="api"}'] >= 5
    assert after['gateway_upstream_duration_seconds_count{route="api"}'] >= 5
    assert 'gateway_request_duration_seconds_bucket{route="api",le="0.0005"}' in text
    assert after[f'gateway_upstream_endpoint_up{{upstream="booking",endpoint="127.0.0.1:{gateway_upstream_port(text)}"}}'] == 1
    # The event loops report their ticks: serving these requests took some.
    assert after["gateway_event_loop_tick_seconds_count"] > before.get("gateway_event_loop_tick_seconds_count", 0)
    assert after['gateway_event_loop_tick_seconds_bucket{le="+Inf"}'] == after["gateway_event_loop_tick_seconds_count"]
    for series in ["gateway_ratelimit_decisions_total", "gateway_jwt_rejections_total", "gateway_redis_errors_total",
                   "gateway_connections", "gateway_config_reloads_total", "gateway_event_loop_tick_seconds",
                   "gateway_event_loop_tasks_total"]:
        assert f"# TYPE {series} " in text
    # Labels stay bounded: no raw paths or client addresses.
    assert "/api/bookings" not in text and "127.0.0.1\"" not in text.replace("endpoint=\"127.0.0.1", "")


def gateway_upstream_port(text):
    return re.search(r'endpoint="127\.0\.0\.1:(\d+)"', text).group(1)


def test_metrics_only_on_admin(gateway):
    with httpx.Client(verify=False) as c:
        assert c.get(gateway.url("/metrics")).status_code == 404


def test_access_log_has_every_field_and_no_secrets(gateway):
    with httpx.Client(verify=False, http2=True) as c:
        r = c.get(gateway.url("/api/bookings?token=SECRET-QUERY&email=a@b.c"),
                  headers={"Authorization": "Bearer SECRET-TOKEN", "Cookie": "session=SECRET-COOKIE",
                           "X-Request-Id": "log-test-1"})
        assert r.status_code == 200
    lines = [l for l in gateway.access_log() if l.get("request_id") == "log-test-1"]
    assert len(lines) == 1, gateway.lines[-5:]
    line = lines[0]
    for field in ["time", "request_id", "client_ip", "method", "route", "path", "status", "bytes_in", "bytes_out",
                  "duration_s", "upstream_s", "protocol", "tls_version", "upstream"]:
        assert field in line, field
    assert line["path"] == "/api/bookings" and line["status"] == 200 and line["protocol"] == "HTTP/2"
    assert line["route"] == "api" and line["client_ip"] == "127.0.0.1" and line["bytes_out"] == 226
    assert line["tls_version"] == "TLSv1.3"
    raw = "".join(gateway.lines)
    for secret in ["SECRET-QUERY", "SECRET-TOKEN", "SECRET-COOKIE", "a@b.c"]:
        assert secret not in raw


def test_access_log_can_be_turned_off(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, top_extra="log: { access: false }\n")
    with httpx.Client(verify=False) as c:
        assert c.get(gw.url("/api/bookings")).status_code == 200
    assert gw.access_log() == []
