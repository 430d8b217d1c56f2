#!/usr/bin/env bash
# Runs a command with a throwaway redis-server (unix socket in a temp dir, no persistence) and
# RATELIMIT_REDIS_SOCKET pointing at it; the server is stopped by PID afterwards.
set -euo pipefail
dir=$(mktemp -d)
redis-server --port 0 --unixsocket "$dir/redis.sock" --save '' --appendonly no --daemonize no >"$dir/redis.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do [ -S "$dir/redis.sock" ] && break; sleep 0.05; done
[ -S "$dir/redis.sock" ] || { echo "redis-server did not start:"; cat "$dir/redis.log"; exit 1; }
RATELIMIT_REDIS_SOCKET="$dir/redis.sock" "$@"
