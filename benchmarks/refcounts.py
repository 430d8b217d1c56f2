#!/usr/bin/env python3
"""Reference-count calls per request, by the function that made them: where the gateway's
swift_retain/swift_release traffic comes from, counted exactly rather than sampled.

A uprobe on each of the Swift runtime's `swift_retain` and `swift_release` (libswiftCore.so, or
the gateway binary itself when the runtime is linked in statically, as scripts/release-build.sh
does) is recorded with call graphs
(`perf record -g`) while a fixed number of steady requests goes through the A/B set-up of
benchmarks/ab.py (TLS, one worker on CPU 0, nginx `return 200` upstream; `h2load --h1 -c 8` or
`h2load -c 4 -m 10` on CPU 1, after a warm-up; `e`: `h2load --h1 -c 8` with `Connection: close`,
so every request is a new TCP connection and TLS handshake, and the count is per connection).
Printed: calls per request in total, then per immediate caller (runtime-internal frames skipped)
and per nearest gateway function. Every call
counts, including those on small strings that do no atomic operation, so the total reads higher
than the LD_PRELOAD counter of benchmarks/budget.sh, which sees only calls made through the PLT.
Counts do not drift with the machine's load, so a change that removes calls shows even when the
CPU figures are lost in noise.

With --by-type (the runtime linked in, as in a release build), each call's object is read too (its
first word, the class metadata, matched against the binary's symbols): calls per request by the
type of object counted, and by type and caller. A call on nil (an empty optional reference) is
its own row: it returns at once, where any other does an atomic read-modify-write, so it is the
other rows that cost.

With --probe, other calls are counted the same way: `malloc` (glibc), `locks` (glibc's
`pthread_mutex_lock`, NIO's locks) or `casts` (`swift_dynamicCast`), where benchmarks/budget.sh
only counts them; `unique`: copy-on-write uniqueness checks (`swift_isUniquelyReferenced_nonNull_native`);
`clock`: clock reads (`clock_gettime`).

  benchmarks/refcounts.py [--bin DIR] [--n 2000] [--top 30] [--setup base] [--keep FILE]
                          [--load 'h2load options']
                          [--probe refcounts|malloc|locks|casts] [--by-type] h1|h2|e

Needs root (uprobes), perf (linux-perf) and what benchmarks/peers.sh --install installs.
"""
import argparse
import bisect
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SWIFT_CORE = "/opt/swift/usr/lib/swift/linux/libswiftCore.so"
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
# (library, perf's group name for its probes, symbols)
PROBES = {
    "refcounts": (SWIFT_CORE, "probe_libswiftCore", ("swift_retain", "swift_release")),
    # as benchmarks/budget/malloc-count.c counts them
    "malloc": (LIBC, "probe_libc", ("malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc")),
    "locks": (LIBC, "probe_libc", ("pthread_mutex_lock",)),
    "casts": (SWIFT_CORE, "probe_libswiftCore", ("swift_dynamicCast",)),
    "unique": (SWIFT_CORE, "probe_libswiftCore", ("swift_isUniquelyReferenced_nonNull_native",)),
    "clock": (LIBC, "probe_libc", ("clock_gettime",)),
}


def swift_runtime(binary):
    """Where `binary` finds the Swift runtime: libswiftCore.so, or the binary itself when it was
    linked with `--static-swift-stdlib` (as scripts/release-build.sh links it)."""
    listed = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    linked = re.search(r"libswiftCore\.so => (\S+)", listed)
    return os.environ.get("SWIFT_CORE", linked.group(1)) if linked else binary


def ensure_probes(library, group, symbols):
    listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    for symbol in symbols:
        if f"{group}:{symbol} " not in listed:
            subprocess.run(["perf", "probe", "-q", "-x", library, symbol], check=True)


def probes_in_binary(binary, symbols, fetch=""):
    """Probes on the runtime inside a statically linked `binary`, made afresh each run (a probe
    left by another build named `gateway` would sit at that build's addresses), by address (perf
    looks a name up in the debug information, which has none for the runtime). Their events.
    `fetch`: perf probe arguments to record with each call (e.g. the object's first word)."""
    group = "probe_gwruntime"
    subprocess.run(["perf", "probe", "-q", "-d", f"{group}:*"], capture_output=True)
    table = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    events = []
    for symbol in symbols:
        address = re.search(rf"^([0-9a-f]+) [tT] {symbol}$", table, re.M)
        if not address:
            raise RuntimeError(f"{symbol} is not in {binary}'s symbol table")
        # Event names are unique across groups: libswiftCore's probes may exist too.
        event = f"{group}:rt_{symbol}"
        subprocess.run(["perf", "probe", "-q", "-x", binary, "--add", f"{event}=0x{address.group(1)} {fetch}".strip()], check=True)
        events.append(event)
    return events


def frame_name(line):
    parts = line.strip().split(None, 1)
    return re.sub(r"\+0x[0-9a-f]+$", "", parts[1]) if len(parts) > 1 else "?"


class TypeNames:
    """Names a class metadata address in the running `binary` (loaded at `base`) by the data
    symbol it falls in: `type metadata for HTTP2Stream`."""

    def __init__(self, binary, base):
        self.base = base
        table = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
        self.symbols = sorted((int(address, 16), name) for address, kind, name in
                              (line.split() for line in table.splitlines() if len(line.split()) == 3)
                              if kind in "dDbBsSrRvV")
        self.addresses = [address for address, _ in self.symbols]

    def __call__(self, metadata):
        if metadata == 0:
            return "nil"
        index = bisect.bisect_right(self.addresses, metadata - self.base) - 1
        return self.symbols[index][1] if index >= 0 else "?"


def load_base(pid, binary):
    """Where the binary's first segment is mapped in process `pid`."""
    name = os.path.basename(binary)
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith("/" + name) and fields[2] == "00000000":
            return int(fields[0].split("-")[0], 16)
    raise RuntimeError(f"{binary} is not mapped in process {pid}")


def demangled(names):
    demangler = Path(os.environ.get("SWIFT_DEMANGLE", "/opt/swift/usr/bin/swift-demangle"))
    if not demangler.exists():
        return names
    out = subprocess.run([str(demangler), "--simplified", "--compact"], input="\n".join(names),
                         capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", choices=["h1", "h2", "e"])
    parser.add_argument("--bin", default=os.environ.get("BIN", str(HERE.parent / ".build/release")))
    parser.add_argument("--n", type=int, default=2000, help="requests counted")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--setup", default="base", help="ab.py set-up: base, jwt, limit, cors, cors-redis")
    parser.add_argument("--load", help="h2load's load options instead of the protocol's, e.g. '-c 2 -m 50'")
    parser.add_argument("--keep", help="also keep the perf.data at this path, for `perf script` by hand")
    parser.add_argument("--probe", choices=sorted(PROBES), default="refcounts", help="which calls to count")
    parser.add_argument("--by-type", action="store_true", help="also count by the type of object (runtime linked in)")
    parser.add_argument("--dwarf", action="store_true",
                        help="unwind with DWARF (slow; callers in C code built without frame pointers, e.g. OpenSSL's mallocs)")
    args = parser.parse_args()

    os.environ["BIN"] = args.bin
    sys.path.insert(0, str(HERE))
    import ab  # noqa: E402  (reads BIN at import)

    library, group, symbols = PROBES[args.probe]
    binary = str(Path(args.bin) / "gateway")
    if library == SWIFT_CORE:
        library = swift_runtime(binary)
    if args.by_type and (args.probe != "refcounts" or library != binary):
        parser.error("--by-type counts retains and releases of a build with the runtime linked in")
    if library == binary:
        events = probes_in_binary(binary, symbols, "object=+0(%di):u64" if args.by_type else "")
    else:
        ensure_probes(library, group, symbols)
        events = [f"{group}:{symbol}" for symbol in symbols]
    d = tempfile.mkdtemp()
    bench = ab.Bench(d, 1, args.setup)
    data = f"{d}/refcounts.data"
    proc = None
    try:
        proc = bench.start(args.bin, {})
        type_names = TypeNames(binary, load_base(proc.pid, binary)) if args.by_type else None
        extra = {"h1": ["--h1", "-c", "8"], "h2": ["-c", "4", "-m", "10"],
                 # one request per connection: as many clients as requests, each a new TLS handshake
                 "e": ["--h1", "-c", "8", "-H", "connection: close"]}[args.protocol]
        if args.load:
            extra = args.load.split()
        load = ["taskset", "-c", "1", "h2load", *extra, *bench.extra]
        subprocess.run([*load, "-n", str(args.n), bench.url()], check=True, capture_output=True)
        unwind = ["--call-graph", "dwarf,16384"] if args.dwarf else ["-g"]
        perf = subprocess.Popen(["perf", "record", "-q", *unwind, *(x for e in events for x in ("-e", e)), "-p", str(proc.pid), "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # perf attaches to every thread first
        out = subprocess.run([*load, "-n", str(args.n), bench.url()], check=True, capture_output=True, text=True)
        perf.send_signal(signal.SIGINT)
        perf.wait()
        if f"{args.n} succeeded" not in out.stdout:
            raise RuntimeError(f"h2load: not every request succeeded:\n{out.stdout[-400:]}")
    finally:
        if proc is not None:
            bench.run.stop(proc)
        bench.run.stop_all()

    if args.keep:
        shutil.copyfile(data, args.keep)
    fields = "trace,ip,sym" if args.by_type else "ip,sym"
    script = subprocess.run(["perf", "script", "-i", data, "-F", fields, "--no-demangle"],
                            capture_output=True, text=True, check=True).stdout
    callers, gateway = collections.Counter(), collections.Counter()
    types, type_callers, type_gateway = collections.Counter(), collections.Counter(), collections.Counter()
    for block in script.split("\n\n"):
        lines = [line for line in block.strip().splitlines() if line.strip()]
        object_type = None
        if type_names is not None and lines:
            found = re.search(r"object=(\d+)", lines[0])
            object_type = type_names(int(found.group(1))) if found else "?"
            lines[0] = re.sub(r"^.*?object=\d+\s*", "", lines[0])
            lines = [line for line in lines if line.strip()]
        frames = [frame_name(line) for line in lines]
        if not frames:
            continue
        if len(frames) < 2:
            # Called from code built without frame pointers (OpenSSL, glibc): counted, caller unknown.
            frames.append("[no frame pointer: C code]")
        index = 1
        while index < len(frames) and frames[index].startswith(("swift_", "_swift", "malloc", "_int_malloc", "pthread_mutex_lock", "___pthread")):
            index += 1
        callers[frames[index] if index < len(frames) else "?"] += 1
        nearest = next((f for f in frames[1:] if "$s7Gateway" in f), "(no gateway frame)")
        gateway[nearest] += 1
        if object_type is not None:
            types[object_type] += 1
            type_callers[(object_type, frames[index] if index < len(frames) else "?")] += 1
            type_gateway[(object_type, nearest)] += 1
    total = sum(callers.values())
    print(f"{args.protocol}: {total / args.n:.1f} {' + '.join(symbols)} calls per request "
          f"({args.n} requests, the first ones after perf attached included)")
    for title, counter in (("immediate caller", callers), ("nearest gateway function", gateway)):
        print(f"\n| calls/request | {title} |\n|--:|---|")
        top = counter.most_common(args.top)
        for (_, count), name in zip(top, demangled([name for name, _ in top])):
            print(f"| {count / args.n:.2f} | `{name[:140]}` |")
    if type_names is not None:
        print(f"\n| calls/request | object type |\n|--:|---|")
        top = types.most_common(args.top)
        for (_, count), name in zip(top, demangled([name for name, _ in top])):
            print(f"| {count / args.n:.2f} | `{name.removeprefix('full ').removeprefix('type metadata for ')[:100]}` |")
        for title, counter in (("immediate caller", type_callers), ("nearest gateway function", type_gateway)):
            print(f"\n| calls/request | object type | {title} |\n|--:|---|---|")
            top = counter.most_common(args.top)
            names = demangled([name for (pair, _) in top for name in pair])
            for index, (_, count) in enumerate(top):
                kind, caller = names[2 * index], names[2 * index + 1]
                print(f"| {count / args.n:.2f} | `{kind.removeprefix('full ').removeprefix('type metadata for ')[:60]}` | `{caller[:100]}` |")


if __name__ == "__main__":
    main()
