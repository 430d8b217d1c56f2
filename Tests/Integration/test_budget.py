"""The per-request allocation budget, guarded in `make test`.

The real (debug) gateway runs under an LD_PRELOAD allocation counter (benchmarks/budget/malloc-count.c)
and proxies steady keep-alive requests over TLS, HTTP/1.1 and HTTP/2, to the demo upstream; the counter
is read before and after a fixed number of requests (a real-time signal), so start-up and warm-up allocations do
not count. Allocation counts are stable where times are not, so a regression fails here while speed
stays a benchmark's business (benchmarks/budget.sh reports the release build's figures, syscalls and
CPU per request).

The ceilings are today's debug-build counts plus a small margin: lower them when a change removes
allocations (the issue-11 target for a release build is 5 per request, none of 1 KiB or more).
"""
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import ROOT, Gateway, config_text

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
# HTTP/2 response fields rewritten straight into the nghttp2 scratch: 30.6.
CEILINGS = {"http/1.1": (44, 0.1), "h2": (34, 0.1)}


@pytest.fixture(scope="module")
def counter_library(tmp_path_factory):
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler is needed to build the allocation counter"
    out = tmp_path_factory.mktemp("malloc-count") / "libmalloccount.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(out), str(ROOT / "benchmarks/budget/malloc-count.c")],
                   check=True)
    return out


def read_counts(gw, path):
    """Asks the counter in the gateway for its totals and waits for the line it appends."""
    lines_before = path.read_text().count("\n") if path.exists() else 0
    gw.proc.send_signal(signal.SIGRTMIN + 3)
    deadline = time.time() + 5
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") > lines_before:
            m = re.match(r"mallocs=(\d+) large=(\d+) frees=(\d+)", path.read_text().splitlines()[-1])
            return int(m.group(1)), int(m.group(2))
        time.sleep(0.02)
    raise AssertionError("the allocation counter did not answer SIGRTMIN+3")


def h2load(url, protocol, n):
    args = ["h2load", "-n", str(n), "-c", "2", url]
    args[1:1] = ["--h1"] if protocol == "http/1.1" else ["-m", "10"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out.stdout)
    assert m and int(m.group(1)) == n, out.stdout
    assert re.search(r"status codes: (\d+) 2xx", out.stdout).group(1) == str(n), out.stdout
    return out.stdout


@pytest.mark.parametrize("protocol", ["http/1.1", "h2"])
def test_mallocs_per_proxied_request_stay_within_budget(protocol, counter_library, certs, upstream, tmp_path):
    counts_file = tmp_path / "counts.txt"
    config = config_text(certs, upstream.port, top_extra="log: { access: false }\n").replace("workers: 2", "workers: 1")
    gw = Gateway(config, tmp_path, env={"LD_PRELOAD": str(counter_library), "MALLOC_COUNT_FILE": str(counts_file)})
    try:
        url = gw.url("/api/bookings")
        h2load(url, protocol, 500)  # warm-up: upstream connections pooled, caches filled
        mallocs_before, large_before = read_counts(gw, counts_file)
        h2load(url, protocol, REQUESTS)
        mallocs_after, large_after = read_counts(gw, counts_file)
    finally:
        gw.stop()
    per_request = (mallocs_after - mallocs_before) / REQUESTS
    large_per_request = (large_after - large_before) / REQUESTS
    print(f"{protocol}: {per_request:.1f} mallocs per request, {large_per_request:.2f} of 1 KiB or more")
    # The counter really counts (a zero would make the ceiling meaningless).
    assert per_request >= 1, per_request
    ceiling, large_ceiling = CEILINGS[protocol]
    assert per_request <= ceiling, f"{per_request:.1f} mallocs per {protocol} request, budget {ceiling}"
    assert large_per_request <= large_ceiling, f"{large_per_request:.2f} allocations >= 1 KiB per request, budget {large_ceiling}"
