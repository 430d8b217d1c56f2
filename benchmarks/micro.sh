#!/usr/bin/env bash
# Hot-path microbenchmarks (package-benchmark, the separate package benchmarks/Microbenchmarks):
# route match, header rewrite, HTTP/1.1 head parse-to-forward, CORS origin check, JWT verify
# (HS256 cached/uncached, ES256, RS256, EdDSA) and the in-process rate-limit decision, with
# allocations per operation; CPU instructions too when the kernel exposes the counter (many VMs
# do not: then wall clock and mallocs only). Builds that package in release (minutes the first time).
#
#   benchmarks/micro.sh [--save] [extra `swift package benchmark` options, e.g. --filter JWT]
#     --save   also write benchmarks/results/DATE-micro.md (summary, machine description, full output)
set -euo pipefail
cd "$(dirname "$0")/.."
SAVE=0
if [ "${1:-}" = "--save" ]; then SAVE=1; shift; fi

if perf stat -e instructions true 2>&1 | grep -q '[0-9][0-9,]* *instructions'; then
  export BENCHMARK_INSTRUCTIONS=1
  counters="instructions counted (perf_event)"
else
  counters="no instruction counter on this machine (\`perf stat -e instructions\`: not supported): wall clock + mallocs"
fi

d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
# Metrics marked `*` are per operation (an iteration is 1000 operations for the fast benchmarks).
swift package --package-path benchmarks/Microbenchmarks benchmark --no-progress "$@" 2>&1 \
  | grep -Ev '^\[[0-9]+/[0-9]+\]|^Build|^Compiling|^Linking' | tee "$d/out.txt"

# Summary: per operation, p50 and p99 of the wall clock (ns) and p50 of the allocations.
summary=$(python3 - "$d/out.txt" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
scale = {"ns": 1, "μs": 1_000, "us": 1_000, "ms": 1_000_000}
print("| benchmark | ns/op p50 | ns/op p99 | mallocs/op p50 | instructions/op p50 |")
print("|---|--:|--:|--:|--:|")
for i, line in enumerate(lines):
    if not line.startswith("╒") or i == 0:
        continue
    name, metrics = lines[i - 1].strip(), {}
    for row in lines[i + 1:]:
        if row.startswith("╘"):
            break
        if row.startswith("│"):
            cells = [c.strip() for c in row.strip("│").split("│")]
            metrics[cells[0]] = cells  # metric, p0, p25, p50, p75, p90, p99, p100, samples
    time = next(((k, v) for k, v in metrics.items() if k.startswith("Time (wall clock)")), None)
    if time is None:
        continue
    unit = time[0].split("(")[2].split(")")[0]
    ns = lambda text: f"{float(text.replace(',', '')) * scale[unit]:,.0f}"
    mallocs = next((v[3] for k, v in metrics.items() if k.startswith("Malloc (total)")), "—")
    instr = next((v[3] for k, v in metrics.items() if k.startswith("Instructions")), "—")
    print(f"| {name} | {ns(time[1][3])} | {ns(time[1][6])} | {mallocs} | {instr} |")
PY
)
echo
echo "$summary"

if [ $SAVE = 1 ]; then
  out="benchmarks/results/$(date +%F)-micro.md"
  {
    echo "# $(date +%F) — hot-path microbenchmarks (package-benchmark)"
    echo
    echo "Command: \`benchmarks/micro.sh --save${*:+ $*}\` (release build of benchmarks/Microbenchmarks; $counters;"
    echo "allocations counted by the malloc interposer, whose bookkeeping is inside the wall-clock figures)."
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r),"
    echo "$(. /etc/os-release; echo "$PRETTY_NAME"), $(swift --version 2>/dev/null | head -1 | sed 's/ (.*//')."
    echo "Load average when the run ended: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine widens the tails)."
    echo
    echo "$summary"
    echo
    echo "Full output:"
    echo
    echo '```'
    cat "$d/out.txt"
    echo '```'
  } > "$out"
  echo "wrote $out"
fi
