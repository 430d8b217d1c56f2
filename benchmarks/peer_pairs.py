#!/usr/bin/env python3
"""The peers comparison (benchmarks/peers.py) read in pairs: the gateway and HAProxy run at once,
each on CPU 0, with the same set-up, and are loaded in turn for short slices (the order swapped
every pair), so each pair of slices sees the same machine.

`peers.sh` runs each server alone for whole rounds of 10 s per scenario; on a shared machine whose
speed moves by ±15% between rounds its ratios move with it (sessions 15 and 16 could not read
them). A pair's two slices are seconds apart, so their ratio holds still where the absolute rates
do not. Per scenario this prints the median over the pairs of gateway/HAProxy for requests per
second and for requests per CPU-second, each server's CPU % (≈ 100: the server was the limit;
both must be, for the req/s ratio to be the servers' and not the load core's), and the load core's
busy %.

  BIN=.build/release benchmarks/peer_pairs.py [--pairs 6] [--dur 4] [--scenarios 'A B C D F Fr E']

Needs what `benchmarks/peers.sh --install` installs; `benchmarks/peers.sh` builds BIN and installs
first, so run that once (e.g. SCENARIOS=A ROUNDS=1 DUR=2 benchmarks/peers.sh).
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("BIN", str(HERE.parent / ".build/release"))
sys.path.insert(0, str(HERE))
import peers  # noqa: E402

# Each scenario's set-up, the gateway's and HAProxy's: in Fr the gateway keeps its window in Redis
# (a redis-server on CPU 1) and HAProxy its stick table, as in peers.py.
SETUP_OF = {"A": ("base", "base"), "B": ("base", "base"), "E": ("base", "base"), "C": ("jwt", "jwt"),
            "D": ("limit", "limit"), "F": ("cors", "cors"), "Fr": ("cors-redis", "cors")}
LABEL = {"A": "A: TLS h1 keep-alive (`wrk -t1 -c64`)", "B": "B: TLS h2 (`h2load -c16 -m10`)",
         "C": "C: B + HS256 JWT", "D": "D: C + per-IP limit (in-process / stick table)", "F": "F: D + CORS",
         "Fr": "F with the gateway's window in Redis (HAProxy: F, local table)",
         "E": "E: new TLS connection per request (conn/s)"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--dur", type=int, default=4, help="seconds per slice")
    ap.add_argument("--scenarios", default="A B C D F Fr E")
    args = ap.parse_args()
    if args.pairs < 2:
        ap.error("--pairs: at least 2")
    scenarios = args.scenarios.split()
    unknown = [s for s in scenarios if s not in SETUP_OF]
    if unknown:
        ap.error(f"--scenarios: unknown {unknown} (known: {' '.join(SETUP_OF)})")
    peers.DUR = args.dur
    d = tempfile.mkdtemp(prefix="peer-pairs-")
    run = peers.Run(d)
    rows = {}
    try:
        peers.set_up(run, d)
        if "Fr" in scenarios:
            run.spawn(1, ["redis-server", "--port", str(peers.REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no"], peers.REDIS_PORT)
        for setups in dict.fromkeys(SETUP_OF[s] for s in scenarios):
            servers = {name: run.start_server(name, setup) for name, setup in zip(("gateway", "haproxy"), setups)}
            for scenario in [s for s in scenarios if SETUP_OF[s] == setups]:
                for _, port in servers.values():
                    run.warm(port, scenario)
                pairs = []
                for i in range(args.pairs):
                    order = ("gateway", "haproxy") if i % 2 == 0 else ("haproxy", "gateway")
                    pair = {}
                    for name in order:
                        proc, port = servers[name]
                        pair[name] = run.load(proc.pid, port, scenario, None)
                    pairs.append(pair)
                    g, h = pair["gateway"], pair["haproxy"]
                    peers.log(f"{scenario} pair {i + 1}: gateway {g['rps']:,.0f} req/s ({g['cpu']:.0f}% CPU), "
                              f"HAProxy {h['rps']:,.0f} ({h['cpu']:.0f}%): {g['rps'] / h['rps']:.2f}")
                rows[scenario] = pairs
            for proc, _ in servers.values():
                run.stop(proc)
    finally:
        run.stop_all()
        shutil.rmtree(d, ignore_errors=True)
    report(rows, args)


def report(rows, args):
    print(f"Paired slices: {args.pairs} pairs × {args.dur} s per server and scenario, both servers on CPU 0, "
          "the nginx upstream and the load on CPU 1; medians over the pairs.\n")
    print("| scenario | gateway req/s | CPU % | HAProxy req/s | CPU % | ratio (paired) | quartiles | "
          "req/CPU-s ratio | load core % (gw/HAProxy) | errors (gw/HAProxy) |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for scenario, pairs in rows.items():
        ratios = [p["gateway"]["rps"] / p["haproxy"]["rps"] for p in pairs]
        per_cpu = [p["gateway"]["per_cpu_s"] / p["haproxy"]["per_cpu_s"] for p in pairs
                   if p["gateway"]["per_cpu_s"] and p["haproxy"]["per_cpu_s"]]
        q1, _, q3 = statistics.quantiles(ratios, n=4)

        def med(server, key):
            values = [p[server][key] for p in pairs if p[server].get(key) is not None]
            return statistics.median(values) if values else float("nan")

        errors = "/".join(str(sum(p[s]["errors"] for p in pairs)) for s in ("gateway", "haproxy"))
        print(f"| {LABEL[scenario]} | {med('gateway', 'rps'):,.0f} | {med('gateway', 'cpu'):.0f} | "
              f"{med('haproxy', 'rps'):,.0f} | {med('haproxy', 'cpu'):.0f} | **{statistics.median(ratios):.2f}** | "
              f"{q1:.2f}–{q3:.2f} | {statistics.median(per_cpu):.2f} | "
              f"{med('gateway', 'load_core'):.0f}/{med('haproxy', 'load_core'):.0f} | {errors} |")


if __name__ == "__main__":
    main()
