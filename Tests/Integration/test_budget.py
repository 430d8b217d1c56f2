"""The per-request allocation budget, guarded in `make test`.

The real (debug) gateway runs under an LD_PRELOAD allocation counter (benchmarks/budget/malloc-count.c)
and proxies steady keep-alive requests over TLS, HTTP/1.1 and HTTP/2, to the demo upstream; the counter
is read before and after a fixed number of requests (a real-time signal), so start-up and warm-up allocations do
not count. Allocation counts are stable where times are not, so a regression fails here while speed
stays a benchmark's business (benchmarks/budget.sh reports the release build's figures, syscalls and
CPU per request).

The ceilings are today's debug-build counts plus a small margin: lower them when a change removes
allocations (the issue-11 target for a release build is 5 per steady request, none of 1 KiB or
more: met, 5.0 and 1.5 in benchmarks/budget.sh's steady column). Against a release build
(`make release-check`) the ceilings are the release build's own.
"""
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import GATEWAY, ROOT, Gateway, RedisServer, config_text

REQUESTS = 2000
# Debug build, access log off, one upstream, no policies: (mallocs per request, of them >= 1 KiB).
# Measured on 2026-11-30 (debug): 147 (h1) and 191 (h2) before issue 11's levers, with 2.02 and
# ~1.0 of 1 KiB or more; after the TLS, HTTP/1.1 + proxy and HTTP/2 levers 73.5–73.6 and 56.0–56.6,
# with 0.02–0.03 of 1 KiB or more. HTTP/1.1 heads (client responses, upstream requests) written into
# kept buffers: 49.4–50.0 and 41.2–42.6; with the forwarded traceparent (issue 15) 50.4 and 43.0.
# Evening: request ids written in one go, one rewrite pass for `Connection: keep-alive`: 48.6, 41.8.
# Next: responses encoded inside the HTTP/1.1 handler, no promise for the upstream head, rewritten
# heads sharing the decoded head's storage: 43.9, 38.6. The upstream request head written straight
# from the client's head (`ForwardedRequestHead`, no rebuilt fields, no traceparent string): 41.6, 36.1;
# and the HTTP/1.1 client's response head straight from the upstream's (`ForwardedResponseHead`): 40.7;
# HTTP/2 response fields rewritten straight into the nghttp2 scratch: 30.6. The upstream's own
# response parser instead of NIO's client codec: 39.9–40.3, 29.3–31.2; its own request parser too:
# 39.9–40.5 (h1). The upstream's field lines forwarded as its bytes (no `String` per field, no
# `HTTPHeaders`): 33.9, 23.3. 2026-12-01: closed HTTP/2 stream objects reused for the
# connection's next streams: 34.8, 22.0. The request's fields kept as the client's bytes (a slice of
# the read buffer, the HTTP/2 stream's lines; no `HTTPHeaders`, no `String` per field): 26.9, 16.1;
# the `User-Agent` read only when an access-log line is written: 25.8, 15.3.
# 2026-12-02: the counts under 2 concurrent clients moved between runs (h2 15.7–22.8, h1 23.5–36.4;
# CI once failed h2 at 24.9 against 24) because swift-nio's debug build allocates per task and per
# system call (about two per socket read and write, about five per task, and writes are flushed by
# one task per loop tick since `TickFlushes`), so the count followed how requests shared ticks. The
# load is now one client sending one request at a time: every request has its ticks to itself and
# the count is the same in every run (h1 35.50–35.52, h2 36.58, six runs), so a ceiling under one
# more allocation per request catches one. The release build has none of that debug term (below).
CEILINGS = {"http/1.1": (36, 0.1), "h2": (37, 0.1)}
# Many streams at once on 2 connections: the count moves with how they share ticks (15.6–19.5).
MULTIPLEXED_H2_CEILING = (26, 0.1)
# Swift dynamic casts and pthread mutex locks per request, counted over one more load (the
# issue-11 target is 0 of each). Every cast is swift-nio's `NIOAny` wrapping and unwrapping a typed
# part between handlers; the locks are the event loop taking its task-queue lock, per loop tick and
# per task (0.11 per request in a release build under 64 connections, where ticks batch requests).
# One request at a time (above): casts 21.02 / 14.03, locks 12.02–12.03 (h1 / h2), the same in
# every run, so each ceiling sits under one more per request.
CALL_CEILINGS = {"http/1.1": {"casts": 21.5, "locks": 12.5}, "h2": {"casts": 14.5, "locks": 12.5}}


# Casts and retains are counted by interposing the Swift runtime's entry points, which only a build
# loading `libswiftCore.so` exposes; the release build links the runtime in (`make release-check`
# runs this suite against it), and then only mallocs and locks are seen.
SWIFT_RUNTIME_IS_COUNTED = "libswiftCore.so" in subprocess.run(["ldd", str(GATEWAY)], capture_output=True, text=True).stdout


# The release build (`scripts/release-build.sh`, recognised by its linked-in runtime; `make
# release-check` runs this suite against it) allocates per request only what the request needs.
# One request at a time, 2026-12-04: 5.4 mallocs per request both ways in every run — OpenSSL's
# four per record written and read (the record writer's `WPACKET`s), the exchange, and the load's
# one connection set-up (~840) spread over its 2,000 requests — so 5.9 catches one more; the
# many-stream loads below moved between 2.5–3.0 and 6.1–7.2 from run to run.
RELEASE_BUILD = not SWIFT_RUNTIME_IS_COUNTED
if RELEASE_BUILD:
    CEILINGS = {"http/1.1": (5.9, 0.1), "h2": (5.9, 0.1)}
    MULTIPLEXED_H2_CEILING = (9, 0.1)


def runtime_ceilings(ceilings: dict) -> dict:
    return ceilings if SWIFT_RUNTIME_IS_COUNTED else {key: value for key, value in ceilings.items() if key == "locks"}


@pytest.fixture(scope="module")
def counter_library(tmp_path_factory):
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler is needed to build the allocation counter"
    out = tmp_path_factory.mktemp("malloc-count") / "libmalloccount.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(out), str(ROOT / "benchmarks/budget/malloc-count.c")],
                   check=True)
    return out


def read_all_counts(gw, path):
    """Asks the counter in the gateway for its totals and waits for the line it appends:
    {"mallocs", "large", "frees", "locks", "casts", "retains", "releases"}."""
    lines_before = path.read_text().count("\n") if path.exists() else 0
    gw.proc.send_signal(signal.SIGRTMIN + 3)
    deadline = time.time() + 5
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") > lines_before:
            line = path.read_text().splitlines()[-1]
            return {key: int(value) for key, value in (field.split("=") for field in line.split())}
        time.sleep(0.02)
    raise AssertionError("the allocation counter did not answer SIGRTMIN+3")


def read_counts(gw, path):
    """(mallocs, of them >= 1 KiB) so far."""
    counts = read_all_counts(gw, path)
    return counts["mallocs"], counts["large"]


def h2load(url, protocol, n, clients, streams):
    args = ["h2load", "-n", str(n), "-c", str(clients), url]
    args[1:1] = ["--h1"] if protocol == "http/1.1" else ["-m", str(streams)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out.stdout)
    assert m and int(m.group(1)) == n, out.stdout
    assert re.search(r"status codes: (\d+) 2xx", out.stdout).group(1) == str(n), out.stdout
    return out.stdout


def measure(protocol, config, path, counter_library, tmp_path, clients=1, streams=1):
    """(mallocs per request, of them >= 1 KiB, {casts, locks, retains} per request) over steady
    keep-alive requests to `path` through a gateway started with `config` under the counter.

    By default one client sends one request at a time, so every request has the event loop's ticks
    to itself and the count is the same in every run (swift-nio's debug build allocates per task
    and per system call, which under concurrent load moves with how requests share ticks)."""
    counts_file = tmp_path / "counts.txt"
    gw = Gateway(config, tmp_path, env={"LD_PRELOAD": str(counter_library), "MALLOC_COUNT_FILE": str(counts_file)})
    try:
        url = gw.url(path)
        h2load(url, protocol, 500, clients, streams)  # warm-up: upstream connections pooled, caches filled
        mallocs_before, large_before = read_counts(gw, counts_file)
        h2load(url, protocol, REQUESTS, clients, streams)
        mallocs_after, large_after = read_counts(gw, counts_file)
        # Calls are counted only over this load: the counting itself costs what it counts.
        gw.proc.send_signal(signal.SIGRTMIN + 4)
        calls_before = read_all_counts(gw, counts_file)
        h2load(url, protocol, REQUESTS, clients, streams)
        calls_after = read_all_counts(gw, counts_file)
        gw.proc.send_signal(signal.SIGRTMIN + 4)
    finally:
        gw.stop()
    calls = {key: (calls_after[key] - calls_before[key]) / REQUESTS for key in ("casts", "locks", "retains")}
    return (mallocs_after - mallocs_before) / REQUESTS, (large_after - large_before) / REQUESTS, calls


@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
def test_mallocs_per_proxied_request_stay_within_budget(protocol, counter_library, certs, upstream, tmp_path):
    config = config_text(certs, upstream.port, top_extra="log: { access: false }\n").replace("workers: 2", "workers: 1")
    per_request, large_per_request, calls = measure(protocol, config, "/api/bookings", counter_library, tmp_path)
    print(f"{protocol}: {per_request:.1f} mallocs per request, {large_per_request:.2f} of 1 KiB or more")
    # The counter really counts (a zero would make the ceiling meaningless).
    assert per_request >= 1, per_request
    ceiling, large_ceiling = CEILINGS[protocol]
    assert per_request <= ceiling, f"{per_request:.1f} mallocs per {protocol} request, budget {ceiling}"
    assert large_per_request <= large_ceiling, f"{large_per_request:.2f} allocations >= 1 KiB per request, budget {large_ceiling}"
    print(f"{protocol}: {calls['casts']:.2f} dynamic casts, {calls['locks']:.2f} locks, {calls['retains']:.0f} retains per request")
    # The interposed runtime entry points really count (a Swift program retains all the time).
    if SWIFT_RUNTIME_IS_COUNTED:
        assert calls["retains"] >= 10, calls
    for key, ceiling in runtime_ceilings(CALL_CEILINGS[protocol]).items():
        assert calls[key] <= ceiling, f"{calls[key]:.2f} {key} per {protocol} request, budget {ceiling}"


def deep_h2_load(certs, upstream, counter_library, tmp_path, max_connections):
    """h2, 50 streams at once on each of 2 connections, every upstream connection slot capped."""
    config = config_text(certs, upstream.port, top_extra="log: { access: false }\n").replace("workers: 2", "workers: 1")
    config = config.replace("max_connections: 64", f"max_connections: {max_connections}")
    assert f"max_connections: {max_connections}" in config
    return measure("h2", config, "/api/bookings", counter_library, tmp_path, clients=2, streams=50)


def test_a_client_filling_its_stream_concurrency_allocates_no_stream_per_request(counter_library, certs, upstream, tmp_path):
    """The client closes a whole batch of streams in one read and opens the next batch in the
    next. Closed streams are kept for reuse up to the advertised concurrency (128), so this load
    allocates no stream per request (debug, 2026-12-02: 15.6–19.5 mallocs per request). With
    the old cap of 32 kept streams a release build made 2.8 mallocs per request here against 1.6;
    in a debug build that difference is within the ceiling's room, so the reuse itself is
    checked by `aClientFillingItsConcurrencyGetsItsNextBatchOnReusedStreams`."""
    per_request, large_per_request, _ = deep_h2_load(certs, upstream, counter_library, tmp_path, max_connections=256)
    print(f"h2, 50 streams per connection: {per_request:.1f} mallocs per request, {large_per_request:.2f} of 1 KiB or more")
    assert per_request >= 1, per_request
    ceiling, large_ceiling = MULTIPLEXED_H2_CEILING
    assert per_request <= ceiling, f"{per_request:.1f} mallocs per request at 50 streams, budget {ceiling}"
    assert large_per_request <= large_ceiling, f"{large_per_request:.2f} allocations >= 1 KiB per request, budget {large_ceiling}"


def test_requests_queued_for_an_upstream_slot_cost_no_copy_of_the_queue(counter_library, certs, upstream, tmp_path):
    """100 requests in flight for 8 upstream connections: most wait for a slot. The wait queue is
    changed in place and its timeouts are one loop timer, so waiting costs a promise, not a
    scheduled task and a copy of every waiter. Debug build, 2026-12-02: before, 41.1 mallocs per
    request and 1.03 of 1 KiB or more (the queue's copies); after, 17.8 and 0.03."""
    per_request, large_per_request, _ = deep_h2_load(certs, upstream, counter_library, tmp_path, max_connections=8)
    print(f"h2, 100 streams for 8 upstream slots: {per_request:.1f} mallocs per request, {large_per_request:.2f} of 1 KiB or more")
    assert per_request >= 1, per_request
    ceiling, large_ceiling = MULTIPLEXED_H2_CEILING
    assert per_request <= ceiling, f"{per_request:.1f} mallocs per waiting request, budget {ceiling}"
    assert large_per_request <= large_ceiling, f"{large_per_request:.2f} allocations >= 1 KiB per request, budget {large_ceiling}"


# The product path: every request decided by a rate-limit policy in Redis (one EVALSHA each).
# Debug build, measured on 2026-12-01 (three runs each): mallocs 104.3–104.5 / 76.9–77.5, with
# 0.14–0.17 of 1 KiB or more in h2 (the Redis batch's buffer, new per batch); with that buffer
# kept, 100.4–100.7 / 75.2–75.3 and none. Casts 26.04 every time / 10.5–10.9 (h1 / h2). A release
# build makes about 19 / 13.5 mallocs here (benchmarks/results/2026-12-01-session14.md); a debug
# build leaves its generics unspecialized. One request at a time (above): 110.6 / 107.7 mallocs,
# casts 26.02 / 19.03, the same in every run.
REDIS_CEILINGS = {"http/1.1": (111, 0.1), "h2": (108, 0.1)}
if RELEASE_BUILD:
    # 15.4 / 15.5 in every run (2026-12-04).
    REDIS_CEILINGS = {"http/1.1": (15.9, 0.1), "h2": (16, 0.1)}
REDIS_CALL_CEILINGS = {"http/1.1": {"casts": 26.5}, "h2": {"casts": 19.5}}


@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
def test_mallocs_per_redis_limited_request_stay_within_budget(protocol, counter_library, certs, upstream, tmp_path):
    redis = RedisServer()
    try:
        top = ("log: { access: false }\n"
               "rate_limits:\n  policies:\n"
               "    per_ip: { limit: 1000000000, window: 15m, key: client_ip, algorithm: sliding_window }\n"
               f"redis: {{ url: 'redis://127.0.0.1:{redis.port}', timeout: 1s }}\n")
        api_route = "  - name: api\n    match: { path_prefix: /api/ }\n    upstream: booking\n"
        config = config_text(certs, upstream.port, top_extra=top).replace("workers: 2", "workers: 1")
        assert api_route in config
        config = config.replace(api_route, api_route + "    rate_limits: [per_ip]\n")
        per_request, large_per_request, calls = measure(protocol, config, "/api/bookings", counter_library, tmp_path)
        # Every request was counted in Redis: the window's count is the number of requests sent.
        counted = int(redis.cli("HGET", "gw:rl:{ip:127.0.0.1}:per_ip", "c").strip() or 0)
    finally:
        redis.stop()
    print(f"{protocol} with Redis: {per_request:.1f} mallocs per request, {calls['casts']:.2f} casts, "
          f"{calls['locks']:.2f} locks, {calls['retains']:.0f} retains; {counted} counted")
    assert counted == 500 + 2 * REQUESTS, counted
    ceiling, large_ceiling = REDIS_CEILINGS[protocol]
    assert per_request <= ceiling, f"{per_request:.1f} mallocs per Redis-limited {protocol} request, budget {ceiling}"
    assert large_per_request <= large_ceiling, f"{large_per_request:.2f} allocations >= 1 KiB per request, budget {large_ceiling}"
    for key, ceiling in runtime_ceilings(REDIS_CALL_CEILINGS[protocol]).items():
        assert calls[key] <= ceiling, f"{calls[key]:.2f} {key} per Redis-limited {protocol} request, budget {ceiling}"
