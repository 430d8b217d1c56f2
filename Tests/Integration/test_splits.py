"""Weighted splits and header/cookie feature-flag routes through the real gateway to two real upstreams."""
import time

import httpx
import jwt
import pytest

from conftest import Upstream, metric, scrape_metrics

SECRET = "integration-secret-0123456789-abcdefgh"

TOP = f"""\
jwt:
  issuer: barberpro-auth
  audiences: [barberpro-api]
  keys:
    - {{ kid: hs-1, algorithm: HS256, secret: "{SECRET}" }}
"""


def routes(blue=90, green=10, key=""):
    return f"""\
  - name: rollout
    match: {{ path_prefix: /split/ }}
    split: [{{ upstream: booking, weight: {blue} }}, {{ upstream: green, weight: {green} }}]
    {"split_key: " + key if key else ""}
    auth: optional
  - name: beta
    match: {{ path_prefix: /api/, headers: {{ x-beta: "on" }} }}
    upstream: green
  - name: canary-cookie
    match: {{ path_prefix: /api/, cookies: {{ canary: {{ prefix: "yes" }} }} }}
    upstream: green
"""


@pytest.fixture
def blue_green(gateway_factory):
    blue, green = Upstream(), Upstream()
    extra = f"  green:\n    endpoints: [127.0.0.1:{green.port}]\n"

    def start(**kw):
        return gateway_factory(blue.port, top_extra=TOP, upstream_extra=extra, extra_routes=routes(**kw))

    yield start, blue, green
    blue.stop()
    green.stop()


def token(sub):
    now = int(time.time())
    return jwt.encode({"iss": "barberpro-auth", "aud": "barberpro-api", "sub": sub, "iat": now, "exp": now + 600},
                      SECRET, algorithm="HS256", headers={"kid": "hs-1"})


def requests_of(u):
    return u.stats()["requests"]


def test_ten_thousand_requests_at_90_10(blue_green):
    start, blue, green = blue_green
    gw = start()
    with httpx.Client(timeout=10) as c:
        for i in range(10_000):
            # A path the demo upstream answers 404: the split is decided before the upstream.
            r = c.get(gw.url(f"/split/{i}", listener="plain"))
            assert r.status_code == 404
    b, g = requests_of(blue), requests_of(green)
    assert b + g == 10_000
    assert 8_800 <= b <= 9_200, (b, g)
    samples = scrape_metrics(gw)
    assert metric(samples, "gateway_split_requests_total", route="rollout", upstream="booking") == b
    assert metric(samples, "gateway_split_requests_total", route="rollout", upstream="green") == g


def sides(gw, subjects):
    """Which upstream each subject lands on, read from the split metric's movement."""
    out = {}
    with httpx.Client(timeout=10) as c:
        for sub in subjects:
            before = scrape_metrics(gw)
            r = c.get(gw.url("/split/x", listener="plain"), headers={"authorization": "Bearer " + token(sub)})
            assert r.status_code == 404
            after = scrape_metrics(gw)
            moved = [u for u in ("booking", "green")
                     if after.get(("gateway_split_requests_total", frozenset({("route", "rollout"), ("upstream", u)})), 0)
                     > before.get(("gateway_split_requests_total", frozenset({("route", "rollout"), ("upstream", u)})), 0)]
            assert len(moved) == 1
            out[sub] = moved[0]
    return out


def test_claim_sub_sticks_and_a_reload_moves_only_the_expected_share(blue_green):
    start, blue, green = blue_green
    gw = start(blue=50, green=50, key="claim:sub")
    subjects = [f"user-{i}" for i in range(200)]
    first = sides(gw, subjects)
    assert sides(gw, subjects[:40]) == {s: first[s] for s in subjects[:40]}
    assert 60 <= sum(1 for s in first.values() if s == "green") <= 140

    # 50/50 → 20/80 by hot reload: blue users may move to green, never the other way.
    gw.config_path.write_text(gw.config_path.read_text().replace("weight: 50 }, {", "weight: 20 }, {")
                              .replace("green, weight: 50", "green, weight: 80"))
    r = httpx.post(gw.url("/config/reload", listener="admin"), timeout=10)
    assert r.status_code == 200, r.text
    second = sides(gw, subjects)
    assert all(second[s] == "green" for s in subjects if first[s] == "green")
    moved = sum(1 for s in subjects if first[s] != second[s])
    blue_before = sum(1 for s in first.values() if s == "booking")
    # 3/5 of the blue users move (buckets 2000..5000 of 0..5000), within sampling noise.
    assert 0.4 * blue_before <= moved <= 0.8 * blue_before, (moved, blue_before)


def test_admin_put_split_changes_weights_until_reload(blue_green):
    start, blue, green = blue_green
    gw = start()
    admin = gw.url("/routes/rollout/split", listener="admin")
    r = httpx.put(admin + "?booking=0&green=1", timeout=5)
    assert r.status_code == 200, r.text
    assert r.json() == {"route": "rollout", "split": [{"upstream": "booking", "weight": 0},
                                                      {"upstream": "green", "weight": 1}]}
    with httpx.Client(timeout=10) as c:
        for i in range(50):
            c.get(gw.url(f"/split/{i}", listener="plain"))
    assert requests_of(blue) == 0 and requests_of(green) == 50
    assert httpx.put(admin + "?booking=0", timeout=5).status_code == 400
    assert httpx.put(admin + "?booking=0&green=0", timeout=5).status_code == 400
    assert httpx.put(admin + "?booking=1&blue=1", timeout=5).status_code == 400
    assert httpx.put(gw.url("/routes/nope/split?x=1", listener="admin"), timeout=5).status_code == 404
    assert httpx.put(gw.url("/routes/api/split?x=1", listener="admin"), timeout=5).status_code == 409
    # A reload goes back to the file's weights.
    assert httpx.post(gw.url("/config/reload", listener="admin"), timeout=10).status_code == 200
    assert httpx.get(admin, timeout=5).json()["split"][0] == {"upstream": "booking", "weight": 90}


def test_header_and_cookie_flags_pick_the_flagged_upstream(blue_green):
    start, blue, green = blue_green
    gw = start()
    with httpx.Client(timeout=10) as c:
        assert c.get(gw.url("/api/bookings", listener="plain")).status_code == 200
        assert (requests_of(blue), requests_of(green)) == (1, 0)
        assert c.get(gw.url("/api/bookings", listener="plain"), headers={"x-beta": "on"}).status_code == 200
        assert (requests_of(blue), requests_of(green)) == (1, 1)
        assert c.get(gw.url("/api/bookings", listener="plain"), headers={"x-beta": "off"}).status_code == 200
        assert (requests_of(blue), requests_of(green)) == (2, 1)
        r = c.get(gw.url("/api/bookings", listener="plain"), headers={"cookie": "a=1; canary=yes-please"})
        assert r.status_code == 200
        assert (requests_of(blue), requests_of(green)) == (2, 2)
