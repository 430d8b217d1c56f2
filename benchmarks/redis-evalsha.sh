#!/usr/bin/env bash
# One run, same machine: rate-limit EVALSHA decisions/s through RedisClient (one connection,
# 128 in flight) vs redis-benchmark issuing the same EVALSHA (-c 1 -P 128: 128 in flight).
# redis-server on CPU 0, the client under test on CPU 1. Release build.
set -u
cd "$(dirname "$0")/.."
scripts/release-build.sh --product RedisBench >/dev/null || exit 1
BIN=$(scripts/release-build.sh --show-bin-path)
N=${N:-200000}; P=${P:-128}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null & rs=$!
trap 'kill $rs 2>/dev/null' EXIT
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
for i in 1 2; do
  echo "== round $i"
  out=$(taskset -c 1 "$BIN/RedisBench" "redis://127.0.0.1:$port" "$N" "$P")
  echo "$out"
  # The same command line the client printed.
  cmd=$(echo "$out" | sed -n 's/^redis-benchmark equivalent: //p')
  eval "set -- $cmd"
  taskset -c 1 redis-benchmark -p "$port" -c 1 -P "$P" -n "$N" -q "$@" | tr '\r' '\n' | grep -v '^$' | tail -1
done
