#!/usr/bin/env python3
"""The per-request budget of the gateway and HAProxy, in one run (issue 11's "a per-request budget").

Driven by benchmarks/budget.sh. Same set-up as benchmarks/peers.py (its helpers are reused): one
worker on CPU 0, TLS with the same certificate, a static nginx upstream and the load on CPU 1. For
each server and protocol, three fixed-count loads of N requests (`h2load --h1 -c 64` for HTTP/1.1,
`h2load -c 16 -m 10` for HTTP/2), after a warm-up:
  1. mallocs per request (and those of 1 KiB or more): the server runs under the LD_PRELOAD counter
     in benchmarks/budget/malloc-count.c, read with a real-time signal before and after; in round 1, a
     load of 2N less that of N on as many connections (the handshakes cancel out: mallocs per steady
     keep-alive request), then, over one more load, pthread mutex locks, Swift dynamic casts and
     retains (counted only then);
  2. system calls per request, by name: `strace -c` attached to every thread for the load;
  3. user and system CPU µs per request: utime and stime of the process over the load, and its
     minor page faults (kernel time that no system call shows: memory the allocator returned and
     touches again).
Counts are stable run to run; CPU µs vary with the machine's other work (medians of ROUNDS).

Environment: N (default 20000), ROUNDS (default 3), SERVERS (default "gateway haproxy"), LOADS
(default "http/1.1 h2"; "e" adds a new TLS connection per request, every figure then per connection).
"""
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (BIN must be set before: peers reads it at import)
import refcounts  # noqa: E402

N = int(os.environ.get("N", "20000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SERVERS = os.environ.get("SERVERS", "gateway haproxy").split()
SAVE = "--save" in sys.argv[1:]
ALL_PROTOCOLS = {"http/1.1": ["--h1", "-c", "64"], "h2": ["-c", "16", "-m", "10"],
                 # E: every request on a new TCP connection and full TLS handshake (h2load reconnects
                 # when the server closes), so each figure is per connection.
                 "e": ["--h1", "-c", "16", "-H", "Connection: close"]}
PROTOCOLS = {name: ALL_PROTOCOLS[name] for name in os.environ.get("LOADS", "http/1.1 h2").split()}
IO_CALLS = ("read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg")


def load(port, protocol, n):
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-n", str(n), *PROTOCOLS[protocol],
                          f"https://127.0.0.1:{port}{peers.PATH_}"], capture_output=True, text=True, timeout=600)
    m = re.search(r"status codes: (\d+) 2xx", out.stdout)
    if out.returncode != 0 or not m or int(m.group(1)) != n:
        raise RuntimeError(f"h2load: not all {n} requests succeeded:\n{out.stdout[-800:]}{out.stderr[-300:]}")


def malloc_counts(pid, path):
    """The counter's totals so far: {"mallocs", "large", "frees", "locks", "casts", "retains", "releases"}."""
    before = path.read_text().count("\n") if path.exists() else 0
    os.kill(pid, signal.SIGRTMIN + 3)
    deadline = time.time() + 5
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") > before:
            line = path.read_text().splitlines()[-1]
            return {key: int(value) for key, value in (field.split("=") for field in line.split())}
        time.sleep(0.02)
    raise RuntimeError("the allocation counter did not answer (is the server running under LD_PRELOAD?)")


def strace_counts(pid, port, protocol, d):
    """System calls of every thread of `pid` during one load: {name: calls}."""
    out = Path(d) / "strace.txt"
    tids = [t for t in os.listdir(f"/proc/{pid}/task")]
    tracer = subprocess.Popen(["strace", "-c", "-o", str(out), *sum((["-p", t] for t in tids), [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached to every thread before the load starts
    load(port, protocol, N)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    calls = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] not in ("syscall", "total") and parts[0][0].isdigit():
            calls[parts[-1]] = int(parts[3])
    return calls


def call_counts(pid, port, protocol, path):
    """Locks, dynamic casts and retains per request over one load, counted only for it (the
    counting costs CPU the other loads must not pay)."""
    os.kill(pid, signal.SIGRTMIN + 4)
    try:
        c0 = malloc_counts(pid, path)
        load(port, protocol, N)
        c1 = malloc_counts(pid, path)
    finally:
        os.kill(pid, signal.SIGRTMIN + 4)
    return {key: (c1[key] - c0[key]) / N for key in ("locks", "casts", "retains", "releases")}


def steady_counts(pid, port, protocol, before, after, path):
    """Mallocs per steady keep-alive request: a load of 2N requests less the load of N that ran
    from `before` to `after` (counter totals). Both open the same number of connections, so the
    handshakes and connection set-up (hundreds of mallocs per connection) cancel out."""
    load(port, protocol, 2 * N)
    doubled = malloc_counts(pid, path)
    return {key: ((doubled[name] - after[name]) - (after[name] - before[name])) / N
            for key, name in (("steady", "mallocs"), ("steady_large", "large"))}


def cpu_split(pid):
    """utime and stime (ticks) and minor page faults of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12]), int(fields[7])


def main():
    # With the Swift runtime linked in (scripts/release-build.sh links it so), the gateway's calls
    # to `swift_retain` and `swift_dynamicCast` stay inside the binary, where the LD_PRELOAD
    # counter cannot see them (benchmarks/refcounts.py counts them with uprobes).
    binary = str(peers.BIN / "gateway")
    static_runtime = refcounts.swift_runtime(binary) == binary
    d = tempfile.mkdtemp(prefix="budget-")
    run = peers.Run(d)
    counter = Path(d) / "libmalloccount.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(counter),
                    str(peers.ROOT / "benchmarks/budget/malloc-count.c")], check=True)
    results = {}
    try:
        peers.set_up(run, d)
        run.server_env = {"LD_PRELOAD": str(counter), "MALLOC_COUNT_FILE": f"{d}/counts.txt"}
        for rnd in range(1, ROUNDS + 1):
            for server in SERVERS:
                proc, port = run.start_server(server, "base")
                pid = proc.pid
                peers.log(f"== round {rnd}: {server} (pid {pid})")
                for protocol in PROTOCOLS:
                    load(port, protocol, 2000)  # warm-up: upstream connections, session caches
                    c0 = malloc_counts(pid, Path(f"{d}/counts.txt"))
                    u0, s0, f0 = cpu_split(pid)
                    load(port, protocol, N)
                    u1, s1, f1 = cpu_split(pid)
                    c1 = malloc_counts(pid, Path(f"{d}/counts.txt"))
                    row = {"mallocs": (c1["mallocs"] - c0["mallocs"]) / N, "large": (c1["large"] - c0["large"]) / N,
                           "user_us": (u1 - u0) / peers.CLK_TCK * 1e6 / N, "sys_us": (s1 - s0) / peers.CLK_TCK * 1e6 / N,
                           "faults": (f1 - f0) / N}
                    if rnd == 1:
                        row |= steady_counts(pid, port, protocol, c0, c1, Path(f"{d}/counts.txt"))
                        row |= call_counts(pid, port, protocol, Path(f"{d}/counts.txt"))
                        calls = strace_counts(pid, port, protocol, d)
                        row["syscalls"] = sum(calls.values()) / N
                        row["io"] = sum(v for k, v in calls.items() if k in IO_CALLS) / N
                        row["writes"] = sum(v for k, v in calls.items() if k in ("write", "writev", "sendto", "sendmsg")) / N
                        row["epoll"] = sum(v for k, v in calls.items() if k.startswith("epoll")) / N
                        row["top"] = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
                    results.setdefault((server, protocol), []).append(row)
                run.stop(proc)
    finally:
        run.stop_all()
        subprocess.run(["rm", "-rf", d])

    lines = [f"Per request, N = {N} after a 2,000-request warm-up; mallocs and syscalls from round 1 "
             f"(counts; locks, casts and retains too), CPU µs medians of {ROUNDS} rounds (utime/stime, 10 ms ticks). "
             "`mallocs` include the load's connection handshakes; `steady` is a load of 2N less one of N on as many "
             "connections (keep-alive requests alone).", "",
             "| server | protocol | mallocs | ≥ 1 KiB | steady mallocs | steady ≥ 1 KiB | locks | dynamic casts | retains | syscalls | I/O calls | writes | epoll | user µs | sys µs | page faults | top calls (per request) |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for (server, protocol), rows in results.items():
        first = rows[0]
        med = lambda key: statistics.median(r[key] for r in rows)
        top = ", ".join(f"{k} {v / N:.2f}" for k, v in first.get("top", []))
        unseen = server == "gateway" and static_runtime
        casts, retains = ("n/a", "n/a") if unseen else (f"{first['casts']:.2f}", f"{first['retains']:.0f}")
        lines.append(f"| {server} | {protocol} | {med('mallocs'):.1f} | {med('large'):.2f} | {round(first['steady'], 2) + 0.0:.2f} | "
                     f"{round(first['steady_large'], 2) + 0.0:.2f} | {first['locks']:.2f} | "
                     f"{casts} | {retains} | {first['syscalls']:.2f} | "
                     f"{first['io']:.2f} | {first['writes']:.2f} | {first['epoll']:.2f} | {med('user_us'):.1f} | "
                     f"{med('sys_us'):.1f} | {med('faults'):.2f} | {top} |")
    if static_runtime:
        lines += ["", "The gateway's dynamic casts and retains read n/a: its Swift runtime is linked in, out of the "
                  "LD_PRELOAD counter's sight; `benchmarks/refcounts.py` counts them."]
    table = "\n".join(lines)
    print(table)
    if SAVE:
        peers.save_result("budget", "per-request budget, gateway and HAProxy",
                          f"Command: `N={N} ROUNDS={ROUNDS} benchmarks/budget.sh --save` (release build).\n"
                          f"Load average at the end: {open('/proc/loadavg').read().split()[:3]}.\n\n{table}")


if __name__ == "__main__":
    main()
