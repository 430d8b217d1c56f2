#!/usr/bin/env python3
"""Instructions per request, by function, under callgrind: a count that holds still where CPU time
on this shared machine does not, and that says which function a lever changed.

The gateway runs under `valgrind --tool=callgrind` with instrumentation off (same set-up as
benchmarks/ab.py: one worker, TLS, the static nginx upstream); after a warm-up of 2,000 requests,
counting is switched on for N requests and off again (`callgrind_control`). Valgrind 3.19 cannot
read the DWARF 5 that Swift writes, so the binary runs from a copy without debug sections
(`objcopy --strip-debug`; its symbols stay).

  benchmarks/instructions.py [--n 4000] [--protocol h2|h1|e] [--top 30] [--inclusive] DIR [DIR_B]

With one build: its instructions per request and the functions that spend the most (self, or
with --inclusive what they call too). With two: both totals and the functions whose count moved
most, per request. The totals include the load's four (h2) or sixteen (h1) TLS handshakes, the
same for every build, yet OpenSSL's count moves by up to ±800 instructions per request from run to
run (seen 2026-12-04 between runs of one build); the total outside OpenSSL is printed beside it
and is the one to compare. It still shifts by about 1% (how many requests one loop iteration
handles changes the per-iteration work), so compare builds by the functions a change touched, or
over alternating runs. Instructions are not time: cache misses and atomic reference counts cost
more than their count says, so a lever is still confirmed with benchmarks/paired.py.

Needs valgrind (Debian package) and what benchmarks/peers.sh --install installs.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from refcounts import demangled  # noqa: E402


def count(bindir, protocol, n, out):
    """Runs one build under callgrind; returns the callgrind file of the counted requests."""
    os.environ["BIN"] = str(bindir)
    import ab  # noqa: E402
    import peers  # noqa: E402
    d = tempfile.mkdtemp(prefix="instructions-")
    stripped = Path(d) / "gateway"
    subprocess.run(["objcopy", "--strip-debug", str(Path(bindir) / "gateway"), str(stripped)], check=True)
    bench = ab.Bench(d, 1, "base")
    data = Path(out)
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={data}",
                             str(stripped), "run", "--config", f"{d}/gw.yaml"],
                            stdout=subprocess.DEVNULL, stderr=open(f"{d}/valgrind.log", "ab"))
    bench.run.procs.append(proc)
    try:
        peers.wait_port(peers.GW_PORT, proc, timeout=60.0)  # valgrind starts slowly
        load = ["taskset", "-c", "1", "h2load", *LOADS[protocol]]
        subprocess.run([*load, "-n", "2000", bench.url()], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        result = subprocess.run([*load, "-n", str(n), bench.url()], capture_output=True, text=True)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        if f"{n} succeeded" not in result.stdout:
            raise RuntimeError(f"h2load: not every request succeeded:\n{result.stdout[-400:]}")
        time.sleep(1)
    finally:
        bench.run.stop_all()
        time.sleep(1)
    dumped = Path(f"{data}.1")  # the dump made after the counted requests
    if not dumped.exists():
        raise RuntimeError(f"callgrind wrote no dump; see {d}/valgrind.log")
    return dumped


# `e`: HTTP/1.1 with `connection: close`, so every request is a new TCP connection and TLS handshake
# and the figures are per connection (issue 11's scenario E).
LOADS = {"h1": ["--h1", "-c", "16"], "h2": ["-c", "4", "-m", "10"], "e": ["--h1", "-c", "8", "-H", "connection: close"]}

TLS_LIBRARIES = re.compile(r"/lib(ssl|crypto)\.so")


def functions(data, n, inclusive):
    """Instructions per request: the total, the total outside OpenSSL (whose share is mostly the
    load's handshakes, which move by a few hundred instructions per request from run to run and
    hide what a change did to the request path), and by function."""
    out = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", str(data)],
                         capture_output=True, text=True, check=True).stdout
    total, tls, by_function = 0.0, 0.0, {}
    for line in out.splitlines():
        match = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)$", line)
        if not match:
            continue
        value = int(match.group(1).replace(",", "")) / n
        name = re.sub(r" \[.*\]$", "", match.group(2)).removeprefix("???:")
        if "PROGRAM TOTALS" in name:
            total = value
        else:
            by_function[name] = by_function.get(name, 0) + value
            if not inclusive and TLS_LIBRARIES.search(match.group(2)):
                tls += value
    return total, total - tls, by_function


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", help="one or two directories holding a `gateway` binary")
    parser.add_argument("--n", type=int, default=4000, help="requests counted")
    parser.add_argument("--protocol", choices=sorted(LOADS), default="h2",
                        help="h1, h2, or e: a new TLS connection per request")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--inclusive", action="store_true", help="count what each function calls too")
    parser.add_argument("--keep", help="directory to keep the callgrind files in (for callgrind_annotate by hand)")
    args = parser.parse_args()
    if len(args.dirs) > 2:
        parser.error("one or two builds")
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "objcopy", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"instructions.py: {tool} is missing (Debian: valgrind, binutils, nghttp2-client)")
    keep = Path(args.keep or tempfile.mkdtemp(prefix="callgrind-"))
    keep.mkdir(parents=True, exist_ok=True)
    results = []
    for index, bindir in enumerate(args.dirs):
        data = count(bindir, args.protocol, args.n, keep / f"callgrind.{index}")
        results.append(functions(data, args.n, args.inclusive))
        outside = "" if args.inclusive else f", {results[-1][1]:,.0f} outside OpenSSL"
        print(f"{bindir}: {results[-1][0]:,.0f} instructions per {args.protocol} request{outside} ({args.n} requests; {data})")
    kind = "inclusive" if args.inclusive else "self"
    if len(results) == 1:
        top = sorted(results[0][2].items(), key=lambda item: -item[1])[:args.top]
        print(f"\n| instructions/request ({kind}) | function |\n|--:|---|")
        for (_, value), name in zip(top, demangled([name for name, _ in top])):
            print(f"| {value:,.0f} | `{name[:140]}` |")
        return
    (total_a, outside_a, a), (total_b, outside_b, b) = results
    print(f"\nB/A: {total_b / total_a:.3f}" + ("" if args.inclusive else f"; outside OpenSSL {outside_b / outside_a:.3f}"))
    moved = sorted(set(a) | set(b), key=lambda name: -abs(b.get(name, 0) - a.get(name, 0)))[:args.top]
    print(f"\n| A | B | B − A ({kind}, per request) | function |\n|--:|--:|--:|---|")
    for name, shown in zip(moved, demangled(moved)):
        print(f"| {a.get(name, 0):,.0f} | {b.get(name, 0):,.0f} | {b.get(name, 0) - a.get(name, 0):+,.0f} | `{shown[:140]}` |")


if __name__ == "__main__":
    main()
