#!/usr/bin/env bash
# Runs a command with a throwaway redis-server (no persistence) listening on a unix socket in a
# temp dir and on a free loopback TCP port, with
#   RATELIMIT_REDIS_SOCKET  the socket (redis-cli based script tests)
#   REDIS_TEST_URL          redis://127.0.0.1:PORT (RedisClient / RateLimiterRedis tests)
# pointing at it; the server is stopped by PID afterwards. Tests that kill, block or reconfigure
# a server start their own.
set -euo pipefail
dir=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && { kill $pid 2>/dev/null; wait $pid 2>/dev/null; }; rm -rf "$dir"' EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
# The port is free when chosen but could be taken before redis binds it: retry a few times.
for _ in 1 2 3 4 5; do
  port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --unixsocket "$dir/redis.sock" --save '' --appendonly no \
    --daemonize no >"$dir/redis.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && [ -S "$dir/redis.sock" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
  done
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; pid=""
done
[ -n "$pid" ] || { echo "redis-server did not start:"; cat "$dir/redis.log"; exit 1; }
RATELIMIT_REDIS_SOCKET="$dir/redis.sock" REDIS_TEST_URL="redis://127.0.0.1:$port" "$@"
