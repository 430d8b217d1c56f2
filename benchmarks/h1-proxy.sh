#!/usr/bin/env bash
# One run, same machine: demo upstream direct vs through the gateway (plain h1 and TLS h1).
# Gateway (workers: 1) on CPU 0; wrk and the upstream on CPU 1.
set -u
cd "$(dirname "$0")/.."
BIN=$(scripts/release-build.sh --show-bin-path)
d=$(mktemp -d)
scripts/dev-cert.sh "$d" >/dev/null
cat > "$d/gw.yaml" <<YAML
workers: 1
listeners:
  - name: public
    address: 127.0.0.1:18443
    tls:
      certificates: [{ cert: $d/dev.crt, key: $d/dev.key }]
  - name: plain
    address: 127.0.0.1:18080
admin: { address: 127.0.0.1:19901 }
upstreams:
  booking: { endpoints: [127.0.0.1:13001], max_connections: 256 }
routes:
  - { name: api, match: { path_prefix: /api/ }, upstream: booking }
YAML
taskset -c 1 $BIN/demo-upstream --port 13001 >/dev/null & up=$!
taskset -c 0 $BIN/gateway run --config "$d/gw.yaml" >/dev/null & gw=$!
sleep 1
for i in 1 2; do
echo "== round $i"
echo "-- upstream direct (plain h1)"; taskset -c 1 wrk -t1 -c64 -d8s http://127.0.0.1:13001/api/bookings | grep -E "Requests/sec|Latency"
echo "-- gateway plain h1";          taskset -c 1 wrk -t1 -c64 -d8s http://127.0.0.1:18080/api/bookings | grep -E "Requests/sec|Latency"
echo "-- gateway TLS h1";            taskset -c 1 wrk -t1 -c64 -d8s https://127.0.0.1:18443/api/bookings | grep -E "Requests/sec|Latency"
done
kill $gw $up; wait 2>/dev/null
rm -rf "$d"
