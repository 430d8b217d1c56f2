#!/usr/bin/env bash
# What each edge feature adds, at a fixed rate, one run on one machine (`gateway bench`, open loop):
#   plain     TLS h1 proxy, access log off
#   +log      access log on (metrics are always on)
#   +jwt      HS256 bearer token verified on the route
#   +rl       + per-IP rate limit in the in-process store
#   +redis    + the same limit in Redis (one EVALSHA per request)
#   +cors     + CORS on the route (an Origin on every request)
# Each configuration over TLS HTTP/1.1 and HTTP/2.
# Pinning: gateway (workers: 1) on CPU 0; load generator, demo upstream and redis-server on CPU 1.
#   RATE=2000 DUR=10 benchmarks/features.sh
set -eu
cd "$(dirname "$0")/.."
RATE=${RATE:-2000}
DUR=${DUR:-10}
scripts/release-build.sh >/dev/null
BIN=$(scripts/release-build.sh --show-bin-path)
d=$(mktemp -d)
scripts/dev-cert.sh "$d" >/dev/null
SECRET=bench-secret-0123456789abcdef0123456789
RPORT=26379
taskset -c 1 redis-server --port $RPORT --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 & rd=$!
taskset -c 1 "$BIN/demo-upstream" --port 23101 >/dev/null & up=$!
gw=""
trap 'kill $gw $up $rd 2>/dev/null; rm -rf "$d"' EXIT

config() {  # access(true|false) auth(none|required) limits(yes|no) redis(yes|no) cors(true|false)
  cat > "$d/gw.yaml" <<YAML
workers: 1
listeners:
  - name: public
    address: 127.0.0.1:28543
    tls: { certificates: [{ cert: $d/dev.crt, key: $d/dev.key }] }
admin: { address: 127.0.0.1:29951 }
log: { access: $1 }
jwt:
  issuer: barberpro-auth
  audiences: [barberpro-api]
  keys: [{ kid: hs-1, algorithm: HS256, secret: "$SECRET" }]
cors:
  allowed_origins: [https://app.barberpro.com.ar]
$( [ "$4" = yes ] && echo "redis: { url: 'redis://127.0.0.1:$RPORT', timeout: 20ms }" )
rate_limits:
  policies:
    per_ip: { limit: 100000000, window: 15m, key: client_ip }
upstreams:
  booking: { endpoints: [127.0.0.1:23101], max_connections: 256 }
routes:
  - name: api
    match: { path_prefix: /api/ }
    upstream: booking
    auth: $2
    cors: $5
$( [ "$3" = yes ] && echo "    rate_limits: [per_ip]" )
YAML
}

run() {  # name, then bench args; each configuration runs over h1 and h2 against one gateway start
  local name=$1; shift
  [ -n "$gw" ] && { kill $gw; wait $gw 2>/dev/null || true; }
  taskset -c 0 "$BIN/gateway" run --config "$d/gw.yaml" >/dev/null & gw=$!
  sleep 1
  local url=https://127.0.0.1:28543/api/bookings
  for proto in h1 h2; do
    local p=(--connections 16)
    [ $proto = h2 ] && p=(--http2 --connections 4 --streams 16)
    taskset -c 1 "$BIN/gateway" bench --url $url --rate "$RATE" --duration 2s --threads 1 --quiet --insecure "${p[@]}" "$@" >/dev/null
    taskset -c 1 "$BIN/gateway" bench --url $url --rate "$RATE" --duration "${DUR}s" --threads 1 --quiet --insecure \
      "${p[@]}" --json "$d/$name-$proto.json" "$@" >/dev/null
  done
}
config false none no no false;   run plain
config true none no no false;    run log
config true required no no false; run jwt --jwt-secret $SECRET
config true required yes no false; run rl --jwt-secret $SECRET
config true required yes yes false; run redis --jwt-secret $SECRET
config true required yes yes true; run cors --jwt-secret $SECRET --header "origin: https://app.barberpro.com.ar"

python3 - "$d" "$RATE" <<'PY'
import json, sys
d, rate = sys.argv[1], sys.argv[2]
names = [("plain", "TLS proxy, access log off"), ("log", "+ access log"), ("jwt", "+ HS256 JWT"),
         ("rl", "+ per-IP limit (in-process)"), ("redis", "+ per-IP limit (Redis)"), ("cors", "+ CORS")]
print(f"fixed rate {rate}/s (h1: 16 connections; h2: 4 connections x 16 streams), latencies in microseconds, one run")
print("| configuration | h1 p50 | h1 p99 | h2 p50 | h2 p99 | errors |")
print("|---|---|---|---|---|---|")
for n, label in names:
    cells, errors = [], 0
    for proto in ("h1", "h2"):
        r = json.load(open(f"{d}/{n}-{proto}.json"))
        cells += [f"{r['latency_ms']['p50']*1000:.0f}", f"{r['latency_ms']['p99']*1000:.0f}"]
        errors += r["errors"]["total"]
    print(f"| {label} | " + " | ".join(cells) + f" | {errors} |")
PY
