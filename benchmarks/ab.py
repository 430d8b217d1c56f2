#!/usr/bin/env python3
"""Interleaved A/B of gateway builds or allocators on the A and B set-ups of benchmarks/peers.py.

Each variant is a directory holding a `gateway` binary plus optional environment (e.g. an
LD_PRELOADed allocator). Every round starts each variant in turn (A B A B ...), on CPU 0, one
worker, no access log, TLS, one route to Debian's nginx `return 200` (226-byte body) on CPU 1, and
loads it from CPU 1 with `wrk -t1 -c64` (h1) then `h2load -c16 -m10` (h2) (`--h1-load` and
`--h2-load` change the options, e.g. for a light load). The figure to trust on a
shared machine is the gateway's CPU per request (utime+stime over the run / requests): req/s moves
with whatever else the machine runs. RSS: right after start (idle), its peak over the loads
(VmHWM) and after the loads (idle again). With --mallocs, each variant is also run once under
benchmarks/budget/malloc-count.c for mallocs per request over a fixed count (h1 and h2). With
--profile, every load runs under `perf record` and the table gives the share of the gateway's
samples spent in the allocator and in dynamic exclusivity checks: the most either lever can win.

--setup picks the gateway set-up of benchmarks/peers.py (base by default; jwt, limit, cors, or
cors-redis, which starts its own redis-server on CPU 1) and sends the scenario's headers (token,
Origin).

  benchmarks/ab.py --rounds 4 --dur 10 \\
      --variant glibc .build/release \\
      --variant jemalloc .build/release LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2

Prints a Markdown table (median and min–max per variant) and, with --json FILE, every sample.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("BIN", str(HERE.parent / ".build/release"))
sys.path.insert(0, str(HERE))
import peers  # noqa: E402  (the peers harness's configs and parsers, with ports of our own)

peers.UP_PORT, peers.GW_PORT, peers.ADMIN_PORT = 23201, 28543, 29921
MC_SOURCE = HERE / "budget/malloc-count.c"
ALLOC_SYMBOL = re.compile(r"(__libc_)?(malloc|free|cfree|calloc|realloc|aligned_alloc|posix_memalign|memalign"
                          r"|_int_malloc|_int_free|_int_realloc|_int_memalign|_mid_memalign|malloc_consolidate"
                          r"|unlink_chunk|tcache\w*)(\.\w+)*$")


def proc_status(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise KeyError(key)


SCENARIO_OF_SETUP = {"base": "A", "jwt": "C", "limit": "D", "cors": "F", "cors-redis": "Fr"}


class Bench:
    def __init__(self, d, dur, setup="base", h1_load="-t1 -c64", h2_load="-c16 -m10"):
        self.h1_load, self.h2_load = h1_load.split(), h2_load.split()
        # peers.Run for its process bookkeeping (and, past the base set-up, the JWT it mints).
        if setup == "base":
            self.run = peers.Run.__new__(peers.Run)
            self.run.d, self.run.procs = d, []
            self.extra = []
        else:
            self.run = peers.Run(d)
            self.extra = self.run.headers(SCENARIO_OF_SETUP[setup])
        self.d, self.dur = d, dur
        subprocess.run([str(HERE.parent / "scripts/dev-cert.sh"), d], check=True, stdout=subprocess.DEVNULL)
        Path(f"{d}/gw.yaml").write_text(peers.gateway_yaml(d, setup))
        Path(f"{d}/nginx-up.conf").write_text(peers.nginx_upstream_conf(d))
        self.run.spawn(1, [peers.NGINX, "-p", d, "-c", f"{d}/nginx-up.conf", "-e", f"{d}/nginx-up-error.log"],
                       peers.UP_PORT)
        if setup == "cors-redis":
            self.run.spawn(1, ["redis-server", "--port", str(peers.REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], peers.REDIS_PORT)

    def start(self, bindir, env):
        proc = subprocess.Popen(["taskset", "-c", "0", f"{bindir}/gateway", "run", "--config", f"{self.d}/gw.yaml"],
                                env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                stderr=open(f"{self.d}/gateway.log", "ab"))
        self.run.procs.append(proc)
        peers.wait_port(peers.GW_PORT, proc)
        return proc

    def url(self):
        return f"https://127.0.0.1:{peers.GW_PORT}{peers.PATH_}"

    def h1(self, pid, dur):
        out, cpu, _ = peers.run_load(pid, ["wrk", *self.h1_load, f"-d{dur}s", *self.extra, self.url()])
        rps, total, errors = peers.parse_wrk(out)
        return rps, cpu * 1e6 / total, errors

    def h2(self, pid, dur):
        out, cpu, _ = peers.run_load(pid, ["h2load", *self.h2_load, "-D", str(dur), *self.extra, self.url()])
        rps, total, errors = peers.parse_h2load(out)
        return rps, cpu * 1e6 / total, errors

    def round(self, bindir, env, profile):
        proc = self.start(bindir, env)
        shares = {}
        try:
            time.sleep(1)
            idle = proc_status(proc.pid, "VmRSS")
            self.h1(proc.pid, 2)  # warm-up: TLS session, upstream pool, first heap growth
            if profile:
                h1, shares["h1_alloc%"], shares["h1_access%"] = self.profile(
                    proc.pid, lambda: self.h1(proc.pid, self.dur), f"{self.d}/perf.data")
                h2, shares["h2_alloc%"], shares["h2_access%"] = self.profile(
                    proc.pid, lambda: self.h2(proc.pid, self.dur), f"{self.d}/perf.data")
            else:
                h1 = self.h1(proc.pid, self.dur)
                h2 = self.h2(proc.pid, self.dur)
            peak = proc_status(proc.pid, "VmHWM")
            time.sleep(2)
            after = proc_status(proc.pid, "VmRSS")
        finally:
            self.run.stop(proc)
        return {"h1_rps": h1[0], "h1_us": h1[1], "h1_err": h1[2], "h2_rps": h2[0], "h2_us": h2[1],
                "h2_err": h2[2], "rss_idle": idle, "rss_peak": peak, "rss_after": after, **shares}

    def mallocs(self, bindir, env, lib, n=20000):
        """Mallocs per request over n steady requests, h1 then h2. The counter forwards to glibc, so it
        cannot sit in front of another allocator (mixed heaps crash): a binary is counted under glibc,
        and the Swift side's calls are the same whichever allocator serves them."""
        counts = f"{self.d}/mc.txt"
        proc = self.start(bindir, {**env, "LD_PRELOAD": lib, "MALLOC_COUNT_FILE": counts})
        result = {}
        try:
            url = self.url()
            for proto, extra in (("h1", ["--h1"]), ("h2", ["-m", "10"])):
                subprocess.run(["taskset", "-c", "1", "h2load", *extra, *self.extra, "-n", "2000", "-c", "2", url],
                               check=True, capture_output=True)
                Path(counts).unlink(missing_ok=True)
                proc.send_signal(signal.SIGRTMIN + 3)
                time.sleep(0.2)
                out = subprocess.run(["taskset", "-c", "1", "h2load", *extra, *self.extra, "-n", str(n), "-c", "2", url],
                                     check=True, capture_output=True, text=True).stdout
                if f"{n} succeeded" not in out:
                    raise RuntimeError(f"malloc run incomplete: {out[-400:]}")
                proc.send_signal(signal.SIGRTMIN + 3)
                time.sleep(0.2)
                a, b = [dict(kv.split("=") for kv in line.split()) for line in Path(counts).read_text().splitlines()]
                result[proto] = (int(b["mallocs"]) - int(a["mallocs"])) / n
                result[proto + "_large"] = (int(b["large"]) - int(a["large"])) / n
        finally:
            self.run.stop(proc)
        return result


    def profile(self, pid, load, out):
        """Runs load under `perf record -e cpu-clock` (a software clock: no PMU needed) on pid and returns
        the share of the gateway's samples in the allocator and in dynamic exclusivity checks, in %.
        Shares of one process's own samples hold up better than its CPU time on a loaded machine,
        and they bound what an allocator or the exclusivity flag can win at all."""
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-p", str(pid), "-o", out],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)  # perf attaches to every thread first
        result = load()
        perf.send_signal(signal.SIGINT)  # perf writes its file and exits
        perf.wait()
        report = subprocess.run(["perf", "report", "-i", out, "--stdio", "--sort", "dso,sym"],
                                capture_output=True, text=True)
        if report.returncode != 0 or "%" not in report.stdout:
            raise RuntimeError(f"perf report gave nothing: {report.stderr[-300:]}")
        report = report.stdout
        alloc = access = 0.0
        for line in report.splitlines():
            f = line.split()
            if len(f) < 4 or not f[0].endswith("%"):
                continue
            share, dso, sym = float(f[0][:-1]), f[1], f[3]
            if dso.startswith(("libjemalloc", "libmimalloc")) or (dso.startswith("libc.so") and ALLOC_SYMBOL.match(sym)):
                alloc += share
            elif "swift_beginAccess" in sym or "swift_endAccess" in sym or "AccessSet" in sym:
                access += share
        return result, alloc, access


def summary(values):
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME BINDIR", "ENV=VAL"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--dur", type=int, default=10)
    ap.add_argument("--mallocs", action="store_true")
    ap.add_argument("--setup", default="base", choices=sorted(SCENARIO_OF_SETUP))
    ap.add_argument("--profile", action="store_true",
                    help="perf cpu-clock shares of the allocator and of exclusivity checks (adds perf's own cost)")
    ap.add_argument("--h1-load", default="-t1 -c64", help="wrk's options for the h1 load (default: -t1 -c64)")
    ap.add_argument("--h2-load", default="-c16 -m10", help="h2load's options for the h2 load (default: -c16 -m10)")
    ap.add_argument("--json")
    args = ap.parse_args()
    variants = [(v[0], str(Path(v[1]).resolve()), dict(kv.split("=", 1) for kv in v[2:])) for v in args.variant]
    samples = {name: [] for name, _, _ in variants}
    counts = {}
    with tempfile.TemporaryDirectory(prefix="gw-ab-") as d:
        bench = Bench(d, args.dur, args.setup, args.h1_load, args.h2_load)
        try:
            if args.mallocs:
                lib = f"{d}/libmc.so"
                subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", lib, str(MC_SOURCE)], check=True)
                by_binary = {}
                for name, bindir, env in variants:
                    if bindir not in by_binary:
                        clean = {k: v for k, v in env.items() if k != "LD_PRELOAD"}
                        by_binary[bindir] = bench.mallocs(bindir, clean, lib)
                    counts[name] = by_binary[bindir]
                    print(f"mallocs {name}: {counts[name]}", file=sys.stderr, flush=True)
            for r in range(args.rounds):
                for name, bindir, env in variants:
                    s = bench.round(bindir, env, args.profile)
                    samples[name].append(s)
                    print(f"round {r + 1} {name}: " + " ".join(f"{k}={v:.1f}" for k, v in s.items()),
                          file=sys.stderr, flush=True)
        finally:
            bench.run.stop_all()
    print(f"| variant | h1 req/s | h1 CPU µs/req | h2 req/s | h2 CPU µs/req | RSS idle MiB | RSS peak MiB "
          f"| RSS after MiB |{' mallocs/req h1 / h2 |' if counts else ''}")
    print("|---|--:|--:|--:|--:|--:|--:|--:|" + ("--:|" if counts else ""))
    for name, _, _ in variants:
        col = lambda k: summary([s[k] for s in samples[name]])  # noqa: E731
        row = f"| {name} | {col('h1_rps')} | {col('h1_us')} | {col('h2_rps')} | {col('h2_us')} " \
              f"| {col('rss_idle')} | {col('rss_peak')} | {col('rss_after')} |"
        if counts:
            row += f" {counts[name]['h1']:.1f} / {counts[name]['h2']:.1f} |"
        print(row)
    if args.profile:
        print("\n| variant | h1 allocator % | h1 exclusivity-check % | h2 allocator % | h2 exclusivity-check % |")
        print("|---|--:|--:|--:|--:|")
        for name, _, _ in variants:
            col = lambda k: summary([s[k] for s in samples[name]])  # noqa: E731
            print(f"| {name} | {col('h1_alloc%')} | {col('h1_access%')} | {col('h2_alloc%')} | {col('h2_access%')} |")
    errors = sum(s["h1_err"] + s["h2_err"] for v in samples.values() for s in v)
    print(f"\n{args.rounds} rounds × {args.dur} s, interleaved; median (min–max); load errors: {errors:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": samples, "mallocs": counts}, indent=1))


if __name__ == "__main__":
    main()
