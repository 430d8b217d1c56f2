#!/usr/bin/env python3
"""Does a second worker cost CPU per request? (issue 11, "scaling across cores")

The gateway with `workers: 1` and `workers: 2`, both allowed on both CPUs, in turn (interleaved
rounds), each loaded with the same fixed request count from a load generator that also runs on
these two cores (`h2load --h1 -c 64` and `h2load -c 16 -m 10`, TLS), upstream Debian nginx
`return 200` (as in benchmarks/peers.py). On a 2-core machine the load generator takes CPU from
the server, so raw throughput says little: the figure is the gateway's requests per CPU-second
(utime+stime over the load). The target: workers: 2 within 10% of workers: 1.

SERVERS="gateway haproxy" also runs HAProxy with `nbthread 1` and `nbthread 2` the same way, so the
cost of splitting one load over two event loops on these two shared cores (fewer requests per loop
iteration to share its fixed costs) is seen beside a peer's.

  benchmarks/workers.sh            N=100000 ROUNDS=3 SERVERS=gateway
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

N = int(os.environ.get("N", "100000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SERVERS = os.environ.get("SERVERS", "gateway").split()
LOADS = {"http/1.1": ["--h1", "-c", "64", "-t", "1"], "h2": ["-c", "16", "-m", "10", "-t", "1"]}


def main():
    d = tempfile.mkdtemp(prefix="workers-")
    run = peers.Run(d)
    samples = {}
    try:
        peers.set_up(run, d)  # the certificate, HAProxy's PEM of it, the nginx upstream on CPU 1
        for rnd in range(1, ROUNDS + 1):
            for server in SERVERS:
                for workers in (1, 2):
                    proc, port = run.start_server(server, "base", cpus="0,1", loops=workers)
                    url = f"https://127.0.0.1:{port}{peers.PATH_}"
                    for name, args in LOADS.items():
                        subprocess.run(["h2load", "-n", "5000", *args, url], capture_output=True, check=True)  # warm-up
                        before = peers.cpu_ticks(proc.pid)
                        out = subprocess.run(["h2load", "-n", str(N), *args, url], capture_output=True, text=True, check=True).stdout
                        cpu = (peers.cpu_ticks(proc.pid) - before) / peers.CLK_TCK
                        ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
                        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
                        samples.setdefault((server, name, workers), []).append((ok / cpu, rps, ok))
                        peers.log(f"round {rnd} {server} workers {workers} {name}: {ok / cpu:,.0f} req/CPU-s, {rps:,.0f} req/s, {ok} ok")
                    run.stop(proc)
    finally:
        run.stop_all()
        subprocess.run(["rm", "-rf", d])
    print(f"N = {N} per load, medians of {ROUNDS} interleaved rounds; server and load share both CPUs.\n")
    print("| server | protocol | 1 worker req/CPU-s | 2 workers req/CPU-s | ratio (2/1) | req/s 1 / 2 |")
    print("|---|---|--:|--:|--:|--:|")
    for server in SERVERS:
        for name in LOADS:
            one = statistics.median(s[0] for s in samples[(server, name, 1)])
            two = statistics.median(s[0] for s in samples[(server, name, 2)])
            r1 = statistics.median(s[1] for s in samples[(server, name, 1)])
            r2 = statistics.median(s[1] for s in samples[(server, name, 2)])
            print(f"| {server} | {name} | {one:,.0f} | {two:,.0f} | {two / one:.2f} | {r1:,.0f} / {r2:,.0f} |")


if __name__ == "__main__":
    main()
