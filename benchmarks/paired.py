#!/usr/bin/env python3
"""Paired A/B of two gateway builds: for a change worth a few percent, which `ab.py` cannot see.

`ab.py` starts each variant in turn for rounds of ~20 s; on this shared machine the CPU per
request of the same binary moves by ±15% from one round to the next, so a 2% lever is lost. Here
both builds run at once (each on CPU 0, one worker, TLS, the nginx `return 200` upstream of
benchmarks/peers.py on CPU 1) and are loaded in turn for short slices (3 s by default), the order
swapped every pair. Each pair's two slices see the same machine, so their ratio holds still where
their absolute figures do not: two runs of one build read 0.999 (quartiles 0.984–1.016) here.

  benchmarks/paired.py [--pairs 12] [--dur 3] [--load '-c16 -m10'] [--h1 | --e] [--setup base|jwt|limit|cors] DIR_A DIR_B

--e loads as issue 11's scenario E does (`wrk -t1 -c16` with `Connection: close`: a new TCP
connection and TLS handshake per request; h2load's `-D` never ends with that header), so the
figures are CPU µs per connection.

DIR_A and DIR_B each hold a `gateway` binary (e.g. copies of .build/release/gateway). Prints each
pair's CPU µs per request (utime+stime over the slice / requests) and the median of B/A over the
pairs with its quartiles: below 1.0 means B does the same work with less CPU. The last line gives
the range of the server's CPU % and of the load core's busy % over the slices: a server near 100%
with the load core below it means the server, not the load generator or the upstream, was the limit.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("BIN", str(HERE.parent / ".build/release"))
sys.path.insert(0, str(HERE))
import peers  # noqa: E402  (the peers harness's configs, processes and parsers, with ports of our own)

peers.UP_PORT = 23301
PORTS = {"A": (28601, 29601), "B": (28602, 29602)}  # (listener, admin)
SCENARIO_OF_SETUP = {"base": "A", "jwt": "C", "limit": "D", "cors": "F"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--dur", type=int, default=3, help="seconds per slice")
    ap.add_argument("--load", default="-c16 -m10", help="h2load's options (default: -c16 -m10)")
    ap.add_argument("--h1", action="store_true", help="HTTP/1.1 (h2load --h1) instead of HTTP/2")
    ap.add_argument("--e", action="store_true", help="a new TLS connection per request (wrk, Connection: close)")
    ap.add_argument("--setup", default="base", choices=sorted(SCENARIO_OF_SETUP))
    ap.add_argument("a", metavar="DIR_A")
    ap.add_argument("b", metavar="DIR_B")
    args = ap.parse_args()
    if args.pairs < 2:
        ap.error("--pairs: at least 2 (the quartiles need two ratios)")

    d = tempfile.mkdtemp(prefix="paired-")
    run = peers.Run(d)
    try:
        subprocess.run([str(HERE.parent / "scripts/dev-cert.sh"), d], check=True, stdout=subprocess.DEVNULL)
        Path(f"{d}/nginx-up.conf").write_text(peers.nginx_upstream_conf(d))
        run.spawn(1, [peers.NGINX, "-p", d, "-c", f"{d}/nginx-up.conf", "-e", f"{d}/nginx-up-error.log"], peers.UP_PORT)
        config = peers.gateway_yaml(d, args.setup)
        headers = run.headers(SCENARIO_OF_SETUP[args.setup]) if args.setup != "base" else []
        servers = {}
        for name, bindir in (("A", args.a), ("B", args.b)):
            port, admin = PORTS[name]
            Path(f"{d}/gw-{name}.yaml").write_text(
                config.replace(f":{peers.GW_PORT}", f":{port}").replace(f":{peers.ADMIN_PORT}", f":{admin}"))
            proc = run.spawn(0, [f"{bindir}/gateway", "run", "--config", f"{d}/gw-{name}.yaml"], port)
            servers[name] = (proc, port)

        def slice_cpu_per_request(name, seconds):
            """(server CPU µs per request, server CPU %, load core busy %) over one slice."""
            proc, port = servers[name]
            url = f"https://127.0.0.1:{port}{peers.PATH_}"
            if args.e:
                out, cpu, wall, load_core = peers.run_load_measured(
                    proc.pid, ["wrk", "-t1", "-c16", f"-d{seconds}s", "-H", "Connection: close", *headers, url])
                _, total, errors = peers.parse_wrk(out)
                if not total or errors:
                    raise RuntimeError(f"load on {name} failed:\n{out[-600:]}")
                return cpu * 1e6 / total, 100 * cpu / wall, load_core
            cmd = ["h2load", *(["--h1"] if args.h1 else []), *args.load.split(), "-D", str(seconds), *headers, url]
            out, cpu, wall, load_core = peers.run_load_measured(proc.pid, cmd)
            done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
            if not done or int(done.group(1)) == 0 or int(done.group(2)) or int(done.group(3)):
                raise RuntimeError(f"load on {name} failed:\n{out[-600:]}")
            return cpu * 1e6 / int(done.group(1)), 100 * cpu / wall, load_core

        for name in servers:
            slice_cpu_per_request(name, 2)  # warm-up: TLS, upstream pool, heap
        ratios, figures = [], {"A": [], "B": []}
        busy, load_busy = [], []
        for i in range(args.pairs):
            order = ("A", "B") if i % 2 == 0 else ("B", "A")
            pair = {}
            for name in order:
                pair[name], server_cpu, load_core = slice_cpu_per_request(name, args.dur)
                busy.append(server_cpu)
                load_busy.append(load_core or 0)
            for name in pair:
                figures[name].append(pair[name])
            ratios.append(pair["B"] / pair["A"])
            print(f"pair {i + 1}: A {pair['A']:.1f}  B {pair['B']:.1f} µs/request  B/A {ratios[-1]:.3f}", flush=True)
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(f"A {statistics.median(figures['A']):.2f}, B {statistics.median(figures['B']):.2f} µs/request (medians); "
              f"B/A paired median {statistics.median(ratios):.3f} (quartiles {q1:.3f}–{q3:.3f}); "
              f"B lower in {sum(r < 1 for r in ratios)}/{len(ratios)} pairs; "
              f"server CPU {min(busy):.0f}–{max(busy):.0f}%, load core {min(load_busy):.0f}–{max(load_busy):.0f}%")
    finally:
        run.stop_all()


if __name__ == "__main__":
    main()
