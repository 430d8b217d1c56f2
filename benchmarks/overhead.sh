#!/usr/bin/env bash
# Gateway overhead at a fixed rate, one run on one machine, measured with `gateway bench` (open
# loop, latency from the scheduled send time): p50/p99 straight to the demo upstream (baseline)
# and through the gateway, and the difference.
#
# Pinning: the gateway (workers: 1) on CPU 0; the demo upstream and the load generator
# (`gateway bench --threads 1`) on CPU 1, so the gateway never competes with its own load.
#
#   benchmarks/overhead.sh                 # RATE=2000 DUR=10 by default
#   RATE=5000 DUR=20 benchmarks/overhead.sh --save   # also writes benchmarks/results/DATE-overhead.md
set -eu
cd "$(dirname "$0")/.."
RATE=${RATE:-2000}
DUR=${DUR:-10}
CONNS=${CONNS:-16}
SAVE=${1:-}
scripts/release-build.sh >/dev/null
BIN=$(scripts/release-build.sh --show-bin-path)
d=$(mktemp -d)
scripts/dev-cert.sh "$d" >/dev/null
cat > "$d/gw.yaml" <<YAML
workers: 1
listeners:
  - name: public
    address: 127.0.0.1:28443
    tls:
      certificates: [{ cert: $d/dev.crt, key: $d/dev.key }]
  - name: plain
    address: 127.0.0.1:28080
admin: { address: 127.0.0.1:29901 }
upstreams:
  booking: { endpoints: [127.0.0.1:23001], max_connections: 256 }
routes:
  - { name: api, match: { path_prefix: /api/ }, upstream: booking }
YAML
taskset -c 1 "$BIN/demo-upstream" --port 23001 >/dev/null & up=$!
taskset -c 0 "$BIN/gateway" run --config "$d/gw.yaml" >/dev/null & gw=$!
trap 'kill $gw $up 2>/dev/null; rm -rf "$d"' EXIT
sleep 1

run() {  # name url extra-args...
  local name=$1 url=$2; shift 2
  # A short warm-up at the same rate, then the measured run.
  taskset -c 1 "$BIN/gateway" bench --url "$url" --rate "$RATE" --duration 2s --threads 1 --quiet "$@" >/dev/null
  taskset -c 1 "$BIN/gateway" bench --url "$url" --rate "$RATE" --duration "${DUR}s" --threads 1 --quiet \
    --json "$d/$name.json" --plot "$d/$name.svg" "$@" >/dev/null
}
run baseline  http://127.0.0.1:23001/api/bookings  --connections "$CONNS"
run plain-h1  http://127.0.0.1:28080/api/bookings  --connections "$CONNS"
run tls-h1    https://127.0.0.1:28443/api/bookings --connections "$CONNS" --insecure
run tls-h2    https://127.0.0.1:28443/api/bookings --connections 4 --streams 16 --http2 --insecure

table=$(python3 - "$d" "$RATE" "$DUR" <<'PY'
import json, sys
d, rate, dur = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [("baseline", "demo upstream direct, plain h1"), ("plain-h1", "gateway, plain h1 listener"),
        ("tls-h1", "gateway, TLS h1"), ("tls-h2", "gateway, TLS h2 (4 conn x 16 streams)")]
r = {name: json.load(open(f"{d}/{name}.json")) for name, _ in rows}
b = r["baseline"]["latency_ms"]
us = lambda ms: f"{ms * 1000:.0f}"
print(f"Fixed rate {rate} req/s for {dur}s, open loop; latencies in microseconds.\n")
print("| path | req/s | p50 | p99 | p99.9 | max | errors | p50 − baseline | p99 − baseline |")
print("|---|---|---|---|---|---|---|---|---|")
for name, label in rows:
    x = r[name]; l = x["latency_ms"]
    d50 = "—" if name == "baseline" else f"{(l['p50'] - b['p50']) * 1000:+.0f}"
    d99 = "—" if name == "baseline" else f"{(l['p99'] - b['p99']) * 1000:+.0f}"
    print(f"| {label} | {x['throughput_rps']:.0f} | {us(l['p50'])} | {us(l['p99'])} | {us(l['p99_9'])} | {us(l['max'])} "
          f"| {x['errors']['total']} | {d50} | {d99} |")
PY
)
echo "$table"

if [ "$SAVE" = "--save" ]; then
  out="benchmarks/results/$(date +%F)-overhead.md"
  mkdir -p benchmarks/results
  {
    echo "# $(date +%F) — gateway overhead at a fixed rate, one run"
    echo
    echo "Command: \`RATE=$RATE DUR=$DUR benchmarks/overhead.sh --save\` (release build; gateway \`workers: 1\`"
    echo "pinned to CPU 0; demo upstream and \`gateway bench --threads 1\` pinned to CPU 1; body: the 226-byte"
    echo "\`GET /api/bookings\`)."
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r),"
    echo "$(. /etc/os-release; echo "$PRETTY_NAME"), $(swift --version 2>/dev/null | head -1 | sed 's/ (.*//')."
    echo "Load average when the run ended: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows up in p99)."
    echo
    echo "$table"
  } > "$out"
  echo "wrote $out"
fi
