#!/usr/bin/env python3
"""Scheduler wake-ups per request, per CPU, for the gateway or HAProxy under the A or B load.

The server runs on CPU 0 (the benchmarks/peers.py set-up: TLS, one worker, nginx `return 200`
upstream); the upstream and `h2load` share CPU 1. `perf stat -a -A` counts, over a fixed number of
requests after a warm-up: `sched:sched_wakeup` (a task made runnable), `sched:sched_switch` and
`irq_vectors:call_function_single_entry` (the inter-processor interrupt that wakes a task on the
other core, costly in a VM). A server that sends each response and each upstream request as it is
written wakes the process at the other end once per request whenever that process went idle in
between; one that gathers its sends per event-loop iteration wakes it once per iteration.
Counts do not drift with the machine's load the way req/s do.

  BIN=.build/release benchmarks/wakeups.py [--n 100000] gateway|haproxy h1|h2

Needs root (tracepoints), perf (linux-perf) and what benchmarks/peers.sh --install installs.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("BIN", str(HERE.parent / ".build/release"))
import peers  # noqa: E402  (BIN must be set before: peers reads it at import)

EVENTS = ["sched:sched_wakeup", "sched:sched_switch", "irq_vectors:call_function_single_entry"]
LOADS = {"h1": ["--h1", "-c64"], "h2": ["-c16", "-m10"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server", choices=["gateway", "haproxy"])
    ap.add_argument("protocol", choices=sorted(LOADS))
    ap.add_argument("--n", type=int, default=100000)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="wakeups-")
    run = peers.Run(d)
    try:
        peers.set_up(run, d)
        _, port = run.start_server(args.server, "base")
        url = f"https://127.0.0.1:{port}{peers.PATH_}"
        load = ["taskset", "-c", "1", "h2load", *LOADS[args.protocol], url]
        subprocess.run(load[:4] + ["-n", "5000"] + load[4:], capture_output=True, check=True)  # warm-up
        stat = subprocess.Popen(["perf", "stat", "-x,", "-a", "-A", "-e", ",".join(EVENTS)],
                                stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        out = subprocess.run(load[:4] + ["-n", str(args.n)] + load[4:], capture_output=True, text=True).stdout
        stat.send_signal(2)
        counts = stat.communicate()[1]
        rate = next((line.strip() for line in out.splitlines() if line.startswith("finished in")), "?")
        print(f"{args.server} {args.protocol}, {args.n} requests: {rate}")
        print("| CPU | event | per request |\n|---|---|--:|")
        for line in counts.splitlines():
            fields = line.split(",")
            if len(fields) > 3 and fields[1].isdigit():
                print(f"| {fields[0]} | {fields[3]} | {int(fields[1]) / args.n:.3f} |")
    finally:
        run.stop_all()
        subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    main()
