#!/usr/bin/env bash
# Rate-limit EVALSHA decisions/s through RedisClusterClient (one pipelined connection per
# master, P in flight on each, keys spread over the masters by hash tag) vs
# `redis-benchmark --cluster` issuing the same EVALSHA with the same pipelining (-c <masters>:
# one connection per master, its {tag} replaced by a tag of that master). A real 3-master
# cluster on free ports (CPU 0); the client under test on CPU 1. Release build.
set -u
cd "$(dirname "$0")/.."
scripts/release-build.sh --product RedisBench >/dev/null || exit 1
BIN=$(scripts/release-build.sh --show-bin-path)
N=${N:-300000}; P=${P:-128}
dir=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$dir"' EXIT
ports=()
while [ ${#ports[@]} -lt 3 ]; do
  p=$((20000 + RANDOM % 25000))
  python3 -c "import socket,sys; [socket.socket().bind(('127.0.0.1', q)) for q in (int(sys.argv[1]), int(sys.argv[1]) + 10000)]" "$p" 2>/dev/null && ports+=("$p")
done
for p in "${ports[@]}"; do
  (cd "$dir" && exec taskset -c 0 redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no \
    --cluster-enabled yes --cluster-config-file "nodes-$p.conf" >"$dir/$p.log" 2>&1) & pids+=($!)
done
for p in "${ports[@]}"; do for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done; done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-yes >/dev/null || exit 1
for _ in $(seq 1 100); do redis-cli -p "${ports[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
seeds=$(printf '127.0.0.1:%s,' "${ports[@]}"); seeds=${seeds%,}
for i in 1 2; do
  echo "== round $i"
  out=$(taskset -c 1 "$BIN/RedisBench" "cluster:$seeds" "$N" "$P")
  echo "$out"
  cmd=$(echo "$out" | sed -n 's/^redis-benchmark equivalent: //p')
  eval "set -- $cmd"
  taskset -c 1 redis-benchmark --cluster -h 127.0.0.1 -p "${ports[0]}" -c 3 -P "$P" -n "$N" -q "$@" \
    | tr '\r' '\n' | grep -v '^$' | tail -1
done
