"""The response cache (`routes[].cache`) through the real gateway and the real demo upstream,
whose /api/cacheable sends caching fields on demand and numbers its answers (`n`), so a stored
answer is told from a fresh one and the upstream's own request counter shows what reached it."""
import concurrent.futures
import json

import httpx
import pytest

from conftest import RedisServer, metric, scrape_metrics

CACHE_ROUTE = """  - name: cached
    match: { path_prefix: /api/cacheable }
    upstream: booking
    cache: { max_object_bytes: 4KiB }
"""
PUBLIC = "cc=public,max-age=60"


@pytest.fixture
def cached(gateway_factory, upstream):
    # The longest path_prefix wins: the cache route takes /api/cacheable from the `api` route.
    return gateway_factory(upstream.port, extra_routes=CACHE_ROUTE)


def get(gw, path, **kwargs):
    return httpx.get(gw.url(path, listener="plain"), timeout=10, **kwargs)


def test_miss_then_hit_with_age_and_x_cache(cached, upstream):
    first = get(cached, f"/api/cacheable?{PUBLIC}&b=2&a=1")
    assert first.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    before = upstream.stats()["requests"]
    # Same parameters in another order: the same entry.
    second = get(cached, f"/api/cacheable?a=1&{PUBLIC}&b=2")
    assert second.status_code == 200
    assert second.headers["x-cache"] == "HIT"
    assert second.json()["n"] == first.json()["n"]
    assert int(second.headers["age"]) >= 0
    assert second.headers["cache-control"] == "public,max-age=60"
    assert second.headers["content-length"] == str(len(second.content))
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert upstream.stats()["requests"] == before
    # HEAD is its own entry; a HEAD hit carries the length and no body.
    assert httpx.head(cached.url(f"/api/cacheable?{PUBLIC}", listener="plain")).headers["x-cache"] == "MISS"
    head = httpx.head(cached.url(f"/api/cacheable?{PUBLIC}", listener="plain"))
    assert head.headers["x-cache"] == "HIT" and head.content == b""
    # Over HTTPS and HTTP/2 the same entry answers.
    with httpx.Client(http2=True, verify=False) as client:
        h2 = client.get(cached.url(f"/api/cacheable?b=2&a=1&{PUBLIC}"))
    assert h2.http_version == "HTTP/2" and h2.headers["x-cache"] == "HIT" and h2.json()["n"] == first.json()["n"]
    samples = scrape_metrics(cached)
    assert metric(samples, "gateway_cache_requests_total", route="cached", result="hit") == 3
    assert metric(samples, "gateway_cache_requests_total", route="cached", result="miss") == 2
    assert metric(samples, "gateway_cache_stores_total", route="cached") == 2


def test_uncacheable_responses_and_requests_always_reach_the_upstream(cached, upstream):
    for query in ("cc=private,max-age=60", "cc=no-store", f"{PUBLIC}&cookie=1", f"{PUBLIC}&vary=*",
                  "cc=public", f"{PUBLIC}&code=500", f"{PUBLIC}&pad=5000"):
        answers = [get(cached, f"/api/cacheable?{query}") for _ in range(2)]
        assert [a.headers.get("x-cache") for a in answers] == ["MISS", "MISS"], query
        assert answers[0].json()["n"] != answers[1].json()["n"], query
    # A credentialed request bypasses a shared cache entirely (no lookup, no store).
    get(cached, f"/api/cacheable?{PUBLIC}&who=1")
    bearer = get(cached, f"/api/cacheable?{PUBLIC}&who=1", headers={"authorization": "Bearer x"})
    assert "x-cache" not in bearer.headers
    # Routes without `cache` never carry the field.
    assert "x-cache" not in get(cached, "/api/bookings").headers


def test_vary_keeps_one_entry_per_variant(cached, upstream):
    path = f"/api/cacheable?{PUBLIC}&vary=accept-language"
    en = get(cached, path, headers={"accept-language": "en"})
    fr = get(cached, path, headers={"accept-language": "fr"})
    assert (en.headers["x-cache"], fr.headers["x-cache"]) == ("MISS", "MISS")
    assert (en.json()["varied"], fr.json()["varied"]) == ("en", "fr")
    en2 = get(cached, path, headers={"accept-language": "en"})
    fr2 = get(cached, path, headers={"accept-language": "fr"})
    assert (en2.headers["x-cache"], en2.json()) == ("HIT", en.json())
    assert (fr2.headers["x-cache"], fr2.json()) == ("HIT", fr.json())


def test_expired_entry_is_fetched_again(cached, upstream):
    path = "/api/cacheable?cc=max-age=1"
    first = get(cached, path)
    assert get(cached, path).headers["x-cache"] == "HIT"
    import time
    deadline = time.time() + 10
    while True:
        again = get(cached, path)
        if again.headers["x-cache"] == "MISS":
            break
        assert time.time() < deadline, "entry never expired"
        time.sleep(0.2)
    assert again.json()["n"] != first.json()["n"]


def test_one_hundred_concurrent_misses_make_one_upstream_fetch(cached, upstream):
    # The upstream holds the first answer 500 ms, so the other requests arrive while it is in flight.
    path = f"/api/cacheable?{PUBLIC}&delay_ms=500&coalesce=1"
    before = upstream.stats()["requests"]
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    with httpx.Client(limits=limits, timeout=20) as client:
        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(lambda _: client.get(cached.url(path, listener="plain")), range(100)))
    assert [a.status_code for a in answers] == [200] * 100
    assert len({a.json()["n"] for a in answers}) == 1
    assert upstream.stats()["requests"] - before == 1
    assert sorted(a.headers["x-cache"] for a in answers).count("MISS") >= 1


def test_purge_by_prefix(cached, upstream):
    for path in (f"/api/cacheable?{PUBLIC}&p=1", f"/api/cacheable/x?{PUBLIC}"):
        get(cached, path)
        assert get(cached, path).headers["x-cache"] == "HIT"
    bad = httpx.post(cached.url("/cache/purge?prefix=api", listener="admin"))
    assert bad.status_code == 400
    purged = httpx.post(cached.url("/cache/purge?prefix=/api/cacheable/x", listener="admin"))
    assert purged.status_code == 200 and purged.json()["purged"] == 1
    assert get(cached, f"/api/cacheable/x?{PUBLIC}").headers["x-cache"] == "MISS"
    assert get(cached, f"/api/cacheable?{PUBLIC}&p=1").headers["x-cache"] == "HIT"
    everything = httpx.post(cached.url("/cache/purge", listener="admin")).json()
    assert everything["purged"] == 2
    assert get(cached, f"/api/cacheable?{PUBLIC}&p=1").headers["x-cache"] == "MISS"
    # Purge is an admin-listener endpoint only.
    assert httpx.post(cached.url("/cache/purge", listener="plain")).status_code != 200


@pytest.fixture
def redis_server():
    r = RedisServer()
    yield r
    r.stop()


SHARED_ROUTE = CACHE_ROUTE.replace("{ max_object_bytes: 4KiB }", "{ max_object_bytes: 4KiB, store: redis }")


def shared_pair(gateway_factory, upstream, redis_port):
    top = f"redis: {{ url: redis://127.0.0.1:{redis_port}, timeout: 500ms }}\n"
    return [gateway_factory(upstream.port, extra_routes=SHARED_ROUTE, top_extra=top) for _ in range(2)]


def wait_for(predicate, what, seconds=10):
    import time
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_entries_in_redis_are_shared_by_instances(gateway_factory, upstream, redis_server):
    a, b = shared_pair(gateway_factory, upstream, redis_server.port)
    path = f"/api/cacheable?{PUBLIC}&vary=accept-language&body=bin"
    # Redis connections come up in the background: until then a lookup is a miss.
    wait_for(lambda: get(a, "/api/cacheable?cc=no-store").status_code == 200, "gateway a up")
    first = get(a, path, headers={"accept-language": "en"})
    assert first.headers["x-cache"] == "MISS"
    wait_for(lambda: redis_server.cli("--scan", "--pattern", "gwcache:cached:*").count("\n") >= 2, "entry in redis")
    before = upstream.stats()["requests"]
    other = get(b, path, headers={"accept-language": "en"})
    assert other.headers["x-cache"] == "HIT"
    assert other.json() == first.json()
    assert other.headers["content-length"] == str(len(other.content))
    # Keys hold NUL-separated Vary parts: read the TTL inside Redis rather than through redis-cli's quoting.
    script = "return redis.call('pttl', redis.call('keys', ARGV[1])[1])"
    ttl = int(redis_server.cli("eval", script, "0", "gwcache:cached:{GET*").strip())
    assert 0 < ttl <= 60_000
    # Another variant is its own entry on both.
    assert get(b, path, headers={"accept-language": "fr"}).headers["x-cache"] == "MISS"
    assert upstream.stats()["requests"] == before + 1
    # Purge reaches Redis too.
    assert httpx.post(b.url("/cache/purge?prefix=/api/cacheable", listener="admin")).status_code == 200
    wait_for(lambda: redis_server.cli("--scan", "--pattern", "gwcache:*").strip() == "", "redis purged")
    assert get(a, path, headers={"accept-language": "fr"}).headers["x-cache"] == "MISS"


def test_redis_down_means_misses_never_errors(gateway_factory, upstream, redis_server):
    a, = shared_pair(gateway_factory, upstream, redis_server.port)[:1]
    redis_server.stop()
    answers = [get(a, f"/api/cacheable?{PUBLIC}&down=1") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    # The first fetch fills the in-process LRU even without Redis.
    assert [r.headers["x-cache"] for r in answers] == ["MISS", "HIT", "HIT"]
    fresh = [get(a, f"/api/cacheable?{PUBLIC}&down={i}") for i in range(2, 6)]
    assert all(r.status_code == 200 and r.headers["x-cache"] == "MISS" for r in fresh)


def test_stale_while_revalidate_answers_at_once_and_refreshes_in_the_background(cached, upstream):
    path = "/api/cacheable?cc=max-age=1,stale-while-revalidate=30&swr=1"
    first = get(cached, path)
    assert first.headers["x-cache"] == "MISS"
    before = upstream.stats()["requests"]
    stale = None

    def saw_stale():
        nonlocal stale
        stale = get(cached, path)
        return stale.headers["x-cache"] == "STALE"
    wait_for(saw_stale, "entry never went stale")
    assert stale.json()["n"] == first.json()["n"]
    assert int(stale.headers["age"]) >= 1
    # The refresh lands in the background; then a fresh copy answers.
    wait_for(lambda: get(cached, path).json()["n"] != first.json()["n"], "never refreshed")
    fresh = get(cached, path)
    assert fresh.headers["x-cache"] == "HIT"
    assert upstream.stats()["requests"] == before + 1


def test_stale_if_error_answers_when_the_upstream_is_gone(cached, upstream):
    path = "/api/cacheable?cc=max-age=1,stale-if-error=60&sie=1"
    first = get(cached, path)
    assert first.headers["x-cache"] == "MISS"
    assert get(cached, f"/api/cacheable?cc=max-age=1&sie=0").headers["x-cache"] == "MISS"
    upstream.stop()
    import time
    time.sleep(1.2)
    answer = get(cached, path)
    assert answer.status_code == 200
    assert answer.headers["x-cache"] == "STALE"
    assert answer.json() == first.json()
    # Without stale-if-error the expired entry is not used: the gateway's own error.
    assert get(cached, "/api/cacheable?cc=max-age=1&sie=0").status_code in (502, 503)


def test_key_by_subject_keeps_one_entry_per_user(gateway_factory, upstream):
    import time

    import jwt
    secret = "cache-test-secret-of-thirty-two-bytes!!"
    top = (f"jwt:\n  issuer: i\n  audiences: [a]\n  keys:\n    - {{ kid: k, algorithm: HS256, secret: \"{secret}\" }}\n")
    route = CACHE_ROUTE.replace("{ max_object_bytes: 4KiB }", "{ key_by: claim:sub }") + "    auth: required\n"
    gw = gateway_factory(upstream.port, top_extra=top, extra_routes=route)

    def bearer(sub):
        now = int(time.time())
        token = jwt.encode({"iss": "i", "aud": "a", "sub": sub, "iat": now, "exp": now + 600}, secret,
                           algorithm="HS256", headers={"kid": "k"})
        return {"authorization": f"Bearer {token}"}
    path = f"/api/cacheable?{PUBLIC}&mine=1"
    alice = get(gw, path, headers=bearer("alice"))
    bob = get(gw, path, headers=bearer("bob"))
    assert (alice.headers["x-cache"], bob.headers["x-cache"]) == ("MISS", "MISS")
    assert alice.json()["n"] != bob.json()["n"]
    again = get(gw, path, headers=bearer("alice"))
    assert (again.headers["x-cache"], again.json()) == ("HIT", alice.json())
    assert get(gw, path).status_code == 401
