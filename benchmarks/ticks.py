#!/usr/bin/env python3
"""Latency at a fixed rate next to the gateway's own event-loop ticks: is a latency tail queueing
(many short ticks, the worker near its CPU limit) or stalls (a few long ticks)?

The A/B set-up of benchmarks/peers.py (TLS, one worker on CPU 0, nginx `return 200` upstream and
the load on CPU 1). For each protocol, `gateway bench --rate` runs open loop (coordinated omission
corrected) while `/metrics` is read before and after, so the tick histogram covers that run only.
Printed per run: latency p50/p99/max, the gateway's CPU %, ticks per second, the busy-time-weighted
tick quantiles (the tick length the average request waited behind) and the longest tick bucket.

  BIN=.build/release RATE=12000 DUR=10 ROUNDS=3 python3 benchmarks/ticks.py
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402

RATE = int(os.environ.get("RATE", "12000"))
DUR = int(os.environ.get("DUR", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
NAME = "gateway_event_loop_tick_seconds"


def ticks(port):
    """Cumulative bucket counts by upper bound (seconds, +Inf last), and the busy-time sum."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets, total = {}, 0.0
    for line in text.splitlines():
        if line.startswith(f"{NAME}_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = int(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{NAME}_sum"):
            total = float(line.rsplit(" ", 1)[1])
    return buckets, total


def describe(before, after, wall):
    (b0, s0), (b1, s1) = before, after
    bounds = sorted(b1)
    per_bucket, previous = [], 0
    for bound in bounds:
        cumulative = b1[bound] - b0.get(bound, 0)
        per_bucket.append((bound, cumulative - previous))
        previous = cumulative
    count = previous
    busy = s1 - s0
    # A tick's share of busy time: its count times its bucket's midpoint (upper bound for the last).
    lower, weighted = 0.0, []
    for bound, n in per_bucket:
        mid = bound if bound == float("inf") else (lower + bound) / 2
        weighted.append((bound, n * (lower * 2 if bound == float("inf") else mid)))
        lower = bound if bound != float("inf") else lower
    total_weight = sum(w for _, w in weighted) or 1

    def weighted_quantile(q):
        running = 0.0
        for bound, w in weighted:
            running += w
            if running >= q * total_weight:
                return bound
        return bounds[-1]

    longest = max((bound for bound, n in per_bucket if n > 0), default=0)
    over_1ms = sum(n for bound, n in per_bucket if bound > 0.001)
    return {"ticks_per_s": count / wall, "busy_per_tick_us": 1e6 * busy / max(count, 1),
            "tick_w50_le_ms": 1e3 * weighted_quantile(0.5), "tick_w99_le_ms": 1e3 * weighted_quantile(0.99),
            "longest_tick_le_ms": 1e3 * longest, "ticks_over_1ms": over_1ms}


def main():
    d = tempfile.mkdtemp(prefix="gw-ticks-")
    run = peers.Run.__new__(peers.Run)
    run.d, run.procs, run.server_env = d, [], {}
    rows = {"h1": [], "h2": []}
    try:
        subprocess.run([str(peers.ROOT / "scripts/dev-cert.sh"), d], check=True, stdout=subprocess.DEVNULL)
        Path(f"{d}/nginx-up.conf").write_text(peers.nginx_upstream_conf(d))
        run.spawn(1, [peers.NGINX, "-p", d, "-c", f"{d}/nginx-up.conf", "-e", f"{d}/nginx-up-error.log"], peers.UP_PORT)
        proc, port = run.start_server("gateway", "base")
        run.warm(port, "A")
        url = f"https://127.0.0.1:{port}{peers.PATH_}"
        for _ in range(ROUNDS):
            for proto, extra in (("h1", ["--connections", "64"]),
                                 ("h2", ["--http2", "--connections", "4", "--streams", "16"])):
                out = f"{d}/rate.json"
                before = ticks(peers.ADMIN_PORT)
                _, cpu, wall = peers.run_load(proc.pid, [str(peers.BIN / "gateway"), "bench", "--url", url, "--rate", str(RATE),
                                                         "--duration", f"{DUR}s", "--threads", "1", "--insecure", "--quiet",
                                                         "--json", out, *extra])
                after = ticks(peers.ADMIN_PORT)
                r = json.load(open(out))
                row = {"rps": r["throughput_rps"], "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
                       "max_ms": r["latency_ms"]["max"], "cpu%": 100 * cpu / wall, **describe(before, after, wall)}
                rows[proto].append(row)
                print(proto, " ".join(f"{k}={v:.2f}" for k, v in row.items()), file=sys.stderr, flush=True)
        print(f"\nFixed rate {RATE}/s, {ROUNDS} rounds x {DUR} s, medians (gateway `{peers.BIN}/gateway`, one worker):\n")
        keys = list(rows["h1"][0])
        print("| protocol | " + " | ".join(keys) + " |")
        print("|---|" + "--:|" * len(keys))
        for proto in ("h1", "h2"):
            print(f"| {proto} | " + " | ".join(f"{statistics.median(r[k] for r in rows[proto]):.2f}" for k in keys) + " |")
        print("\ntick_w50/w99: the tick length (bucket upper bound) below which 50%/99% of the loop's busy time "
              "was spent, i.e. what a request typically waited behind; longest_tick: the highest bucket reached.")
    finally:
        run.stop_all()
        subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    main()
