#!/usr/bin/env bash
# The gateway against nginx and HAProxy in ONE run on one machine (SPEC "Benchmarks", issue 6
# item 4): each terminates TLS with the same generated certificate and proxies to the same demo
# upstream on loopback, with one worker, and each faces the same scenarios:
#   A  TLS HTTP/1.1 keep-alive, max throughput:  wrk -t1 -c64 -d${DUR}s
#   B  TLS HTTP/2, max throughput:                h2load -c16 -m10 -D ${DUR}
#   p99 at a fixed rate (open loop, no coordinated omission): gateway bench --rate $RATE, h1 and h2
# in ROUNDS rounds (servers taking turns, so drift on the machine hits all alike); the medians per
# server and the ratios gateway/peer are printed (throughput: > 1 is the gateway ahead; p99: < 1 is).
#
# Pinning (taskset): the server under test on CPU 0; the load generator and the demo upstream on
# CPU 1. Servers listen on 127.0.0.1 only, are started one at a time and stopped by PID; configs,
# certificate and key live in a temp dir that is removed at the end (nothing is committed).
# No access logs anywhere (nginx `access_log off`, HAProxy without `log`, gateway `log.access: false`).
#
#   benchmarks/peers.sh [--install] [--save]      # DUR=10 RATE=10000 ROUNDS=3 by default
#     --install   apt-get install nginx haproxy wrk nghttp2-client when missing
#     --save      also write benchmarks/results/DATE-peers.md (machine description included)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
RATE=${RATE:-10000}
ROUNDS=${ROUNDS:-3}
INSTALL=0 SAVE=0
for arg in "$@"; do
  case $arg in
    --install) INSTALL=1 ;;
    --save) SAVE=1 ;;
    *) echo "usage: $0 [--install] [--save]" >&2; exit 2 ;;
  esac
done
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores (server on CPU 0, load on CPU 1)" >&2; exit 1; }

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  if [ $INSTALL = 0 ]; then
    echo "missing: ${missing[*]} (Debian packages); run with --install" >&2
    exit 1
  fi
  # Debian starts daemons on install unless policy-rc.d says no: keep the packages' own nginx and
  # haproxy services (port 80, system configs) from starting; we run our own, on loopback.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

swift build -c release >/dev/null
BIN=$(swift build -c release --show-bin-path)
UP_PORT=23101 GW_PORT=28443 NGINX_PORT=28444 HAPROXY_PORT=28445
d=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$d"
}
trap cleanup EXIT
scripts/dev-cert.sh "$d" >/dev/null
cat "$d/dev.crt" "$d/dev.key" > "$d/haproxy.pem"

cat > "$d/gateway.yaml" <<YAML
workers: 1
log: { access: false }
listeners:
  - name: public
    address: 127.0.0.1:$GW_PORT
    protocols: [h2, http/1.1]
    tls:
      certificates: [{ cert: $d/dev.crt, key: $d/dev.key }]
admin: { address: 127.0.0.1:29911 }
upstreams:
  booking: { endpoints: [127.0.0.1:$UP_PORT], max_connections: 256 }
routes:
  - { name: api, match: { path_prefix: /api/ }, upstream: booking }
YAML

mkdir -p "$d/nginx"
cat > "$d/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/nginx/body;
    proxy_temp_path $d/nginx/proxy;
    fastcgi_temp_path $d/nginx/fastcgi;
    uwsgi_temp_path $d/nginx/uwsgi;
    scgi_temp_path $d/nginx/scgi;
    keepalive_requests 1000000;
    upstream demo {
        server 127.0.0.1:$UP_PORT;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl http2;
        ssl_certificate $d/dev.crt;
        ssl_certificate_key $d/dev.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://demo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
        }
    }
}
NGINX

cat > "$d/haproxy.cfg" <<HAPROXY
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT ssl crt $d/haproxy.pem alpn h2,http/1.1
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    default_backend be
backend be
    server demo 127.0.0.1:$UP_PORT
HAPROXY

taskset -c 1 "$BIN/demo-upstream" --port $UP_PORT >/dev/null 2>&1 & pids+=($!)

wait_port() {  # port
  for _ in $(seq 1 50); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2
  return 1
}
wait_port $UP_PORT

# One server at a time on CPU 0: start, warm up, A, B, fixed-rate h1 and h2, stop.
measure() {  # name round port command...
  local name=$1 round=$2 port=$3; shift 3
  taskset -c 0 "$@" >"$d/$name.log" 2>&1 & local pid=$!
  wait_port "$port" || { cat "$d/$name.log" >&2; return 1; }
  local url="https://127.0.0.1:$port/api/bookings"
  echo "== round $round: $name (pid $pid on CPU 0)" >&2
  name=$name.r$round
  taskset -c 1 wrk -t1 -c64 -d3s "$url" >/dev/null                                  # warm-up
  taskset -c 1 wrk -t1 -c64 -d"${DUR}s" --latency "$url" > "$d/$name.wrk"
  taskset -c 1 h2load -c16 -m10 -D "$DUR" "$url" > "$d/$name.h2load" 2>&1
  taskset -c 1 "$BIN/gateway" bench --url "$url" --rate "$RATE" --duration "${DUR}s" --connections 64 \
    --threads 1 --insecure --quiet --json "$d/$name.rate-h1.json" >/dev/null
  taskset -c 1 "$BIN/gateway" bench --url "$url" --rate "$RATE" --duration "${DUR}s" --http2 --connections 4 \
    --streams 16 --threads 1 --insecure --quiet --json "$d/$name.rate-h2.json" >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for round in $(seq 1 "$ROUNDS"); do
  measure gateway "$round" $GW_PORT "$BIN/gateway" run --config "$d/gateway.yaml"
  measure nginx "$round" $NGINX_PORT "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/nginx-error.log"
  measure haproxy "$round" $HAPROXY_PORT "$HAPROXY" -db -f "$d/haproxy.cfg"
done

versions="nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), HAProxy $("$HAPROXY" -v | head -1 | awk '{print $3}'), $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}'), h2load $(h2load --version | awk '{print $2}')"
table=$(python3 - "$d" "$DUR" "$RATE" "$ROUNDS" <<'PY'
import json, re, statistics, sys
d, dur, target_rate, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
servers = ["gateway", "nginx", "haproxy"]

def wrk(name):
    text = open(f"{d}/{name}.wrk").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    def ms(v, unit): return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, ms(*m.groups()) if m else None, errors + (int(non2xx.group(1)) if non2xx else 0)

def h2load(name):
    text = open(f"{d}/{name}.h2load").read()
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    proto = re.search(r"Application protocol: (\S+)", text)
    if not proto or proto.group(1) != "h2":
        sys.exit(f"{name}: h2load did not negotiate h2 ({proto.group(1) if proto else 'no protocol line'})")
    return rps, int(m.group(2)) + int(m.group(3))

def rate(name, proto):
    r = json.load(open(f"{d}/{name}.rate-{proto}.json"))
    return r["throughput_rps"], r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["errors"]["total"]

def median(samples):  # tuples of numbers (None: not reported) → tuple of medians; errors summed
    cols = list(zip(*samples))
    out = []
    for i, col in enumerate(cols):
        values = [v for v in col if v is not None]
        if i == len(cols) - 1:
            out.append(sum(values))
        else:
            out.append(statistics.median(values) if values else None)
    return tuple(out)

raw = {s: [{"A": wrk(f"{s}.r{r}"), "B": h2load(f"{s}.r{r}"), "h1": rate(f"{s}.r{r}", "h1"),
            "h2": rate(f"{s}.r{r}", "h2")} for r in range(1, rounds + 1)] for s in servers}
res = {s: {k: median([run[k] for run in raw[s]]) for k in ["A", "B", "h1", "h2"]} for s in servers}
spread = lambda s, k: "–".join(f"{x:,.0f}" for x in (min(run[k][0] for run in raw[s]), max(run[k][0] for run in raw[s])))
us = lambda ms: f"{ms * 1000:.0f}"
print(f"Medians of {rounds} rounds (servers taking turns); errors summed over the rounds. "
      f"Throughput (req/s, {dur} s each) and latency (µs). A: `wrk -t1 -c64` TLS h1 keep-alive; "
      f"B: `h2load -c16 -m10` TLS h2; fixed rate: `gateway bench --rate {target_rate}` (open loop), "
      "h1 64 connections, h2 4 connections × 16 streams.\n")
print("| server | A req/s | A range | A p99 (wrk, closed loop) | B req/s | B range | h1 @rate p50 | h1 @rate p99 | h2 @rate p50 | h2 @rate p99 | errors (A/B/h1/h2) |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
for s in servers:
    a, b, h1, h2 = res[s]["A"], res[s]["B"], res[s]["h1"], res[s]["h2"]
    print(f"| {s} | {a[0]:,.0f} | {spread(s, 'A')} | {us(a[1]) if a[1] is not None else '—'} | {b[0]:,.0f} | {spread(s, 'B')} | {us(h1[1])} | {us(h1[2])} "
          f"| {us(h2[1])} | {us(h2[2])} | {a[2]}/{b[1]}/{h1[3]}/{h2[3]} |")
print("\nRatios gateway / peer (throughput: > 1 means the gateway is faster; p99: < 1 means the gateway's is lower).\n")
print("| peer | A throughput | B throughput | A p99 (wrk) | h1 p99 @rate | h2 p99 @rate |")
print("|---|---|---|---|---|---|")
g = res["gateway"]
for s in ["nginx", "haproxy"]:
    p = res[s]
    wrk_p99 = f"{g['A'][1] / p['A'][1]:.2f}" if g["A"][1] and p["A"][1] else "—"
    print(f"| {s} | {g['A'][0] / p['A'][0]:.2f} | {g['B'][0] / p['B'][0]:.2f} | {wrk_p99} "
          f"| {g['h1'][2] / p['h1'][2]:.2f} | {g['h2'][2] / p['h2'][2]:.2f} |")
PY
)
pinning="Pinning: server under test on CPU 0 (taskset -c 0, one worker: gateway \`workers: 1\`, nginx \`worker_processes 1\`, HAProxy \`nbthread 1\`); load generator and demo upstream on CPU 1 (taskset -c 1). Servers run one at a time."
echo
echo "$pinning"
echo "$versions"
echo
echo "$table"

if [ $SAVE = 1 ]; then
  out="benchmarks/results/$(date +%F)-peers.md"
  mkdir -p benchmarks/results
  {
    echo "# $(date +%F) — gateway vs nginx and HAProxy, one run"
    echo
    echo "Command: \`DUR=$DUR RATE=$RATE ROUNDS=$ROUNDS benchmarks/peers.sh --save\` (gateway release build). All three terminate"
    echo "TLS with the same generated P-256 certificate (TLS 1.3 negotiated) and proxy \`GET /api/bookings\` (226-byte"
    echo "body) to the same demo upstream on 127.0.0.1 over HTTP/1.1 keep-alive; no access logs."
    echo
    echo "$pinning"
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r),"
    echo "$(. /etc/os-release; echo "$PRETTY_NAME"), $(swift --version 2>/dev/null | head -1 | sed 's/ (.*//'); $versions."
    echo "Load average when the run ended: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows up in p99)."
    echo
    echo "$table"
  } > "$out"
  echo "wrote $out"
fi
