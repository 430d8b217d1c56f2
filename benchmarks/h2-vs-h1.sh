#!/usr/bin/env bash
# HTTP/2 vs HTTP/1.1 through the gateway (TLS), one run on one machine.
# Gateway (workers: 1) pinned to CPU 0; load generators and the demo upstream pinned to CPU 1.
# Throughput: wrk -t1 -c64 (h1), h2load -c16 -m10 and -c1 -m100 (h2).
# Latency at a fixed rate: h2load --rps with --log-file (per-request latencies), for h1 (--h1) and h2.
set -u
cd "$(dirname "$0")/.."
BIN=$(scripts/release-build.sh --show-bin-path)
DUR=${DUR:-8}
RATE=${RATE:-4000}   # requests/s in total for the fixed-rate run (16 clients)
d=$(mktemp -d)
scripts/dev-cert.sh "$d" >/dev/null
cat > "$d/gw.yaml" <<YAML
workers: 1
listeners:
  - name: public
    address: 127.0.0.1:18443
    tls:
      certificates: [{ cert: $d/dev.crt, key: $d/dev.key }]
admin: { address: 127.0.0.1:19901 }
upstreams:
  booking: { endpoints: [127.0.0.1:13001], max_connections: 256 }
routes:
  - { name: api, match: { path_prefix: /api/ }, upstream: booking }
YAML
taskset -c 1 "$BIN/demo-upstream" --port 13001 >/dev/null & up=$!
taskset -c 0 "$BIN/gateway" run --config "$d/gw.yaml" >/dev/null & gw=$!
trap 'kill $gw $up 2>/dev/null; rm -rf "$d"' EXIT
sleep 1
URL=https://127.0.0.1:18443/api/bookings
rps() { grep -oE '[0-9.]+ req/s' | head -1; }
echo "h1  wrk -t1 -c64:        $(taskset -c 1 wrk -t1 -c64 -d${DUR}s $URL | grep Requests/sec | awk '{print $2" req/s"}')"
echo "h2  h2load -c16 -m10:    $(taskset -c 1 h2load -c16 -m10 -D $DUR $URL 2>&1 | rps)"
echo "h2  h2load -c1 -m100:    $(taskset -c 1 h2load -c1 -m100 -D $DUR $URL 2>&1 | rps)"
echo "h1  h2load --h1 -c64:    $(taskset -c 1 h2load --h1 -c64 -D $DUR $URL 2>&1 | rps)"
per_client=$((RATE / 16))
pct() {
  python3 - "$1" <<'PY'
import sys
lat = sorted(int(line.split()[2]) for line in open(sys.argv[1]) if line.strip())
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
print(f"n={len(lat)} p50={p(0.50):.3f}ms p90={p(0.90):.3f}ms p99={p(0.99):.3f}ms max={lat[-1]/1000:.3f}ms")
PY
}
taskset -c 1 h2load --h1 -c16 --rps $per_client -D $DUR --log-file="$d/h1.log" $URL >/dev/null 2>&1
echo "h1  fixed ${RATE}/s:      $(pct "$d/h1.log")"
taskset -c 1 h2load -c16 -m1 --rps $per_client -D $DUR --log-file="$d/h2.log" $URL >/dev/null 2>&1
echo "h2  fixed ${RATE}/s:      $(pct "$d/h2.log")"
