#!/usr/bin/env bash
# The gateway against HAProxy and nginx in ONE run on one machine: scenarios A, B, C, D, F (and F
# with the window in Redis), E and fixed-rate p99, each with the server's CPU % and requests per
# CPU-second, against an upstream that is never the bottleneck. benchmarks/peers.py has the details.
#
#   benchmarks/peers.sh [--install] [--save]
#     DUR=10 ROUNDS=3 RATE=<half of HAProxy's A> SCENARIOS="A B C D F Fr E rate" PEERS="gateway haproxy nginx" UPSTREAM=nginx|demo
#     --install   apt-get install nginx haproxy wrk nghttp2-client redis-server tcpdump when missing
#     --save      also write benchmarks/results/DATE-peers.md (machine description included)
set -euo pipefail
cd "$(dirname "$0")/.."
INSTALL=0 ARGS=()
for arg in "$@"; do
  case $arg in
    --install) INSTALL=1 ;;
    --save) ARGS+=(--save) ;;
    *) echo "usage: $0 [--install] [--save]" >&2; exit 2 ;;
  esac
done
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores (server on CPU 0, load on CPU 1)" >&2; exit 1; }

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v tcpdump >/dev/null || missing+=(tcpdump)  # benchmarks/wire.py
if [ ${#missing[@]} -gt 0 ]; then
  if [ $INSTALL = 0 ]; then
    echo "missing: ${missing[*]} (Debian packages); run with --install" >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  # Debian starts daemons on install unless policy-rc.d says no: keep the packages' own nginx,
  # haproxy and redis services from starting; we run our own, on loopback.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  [ $own_policy = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi
scripts/release-build.sh >/dev/null
export BIN=$(scripts/release-build.sh --show-bin-path)
exec python3 benchmarks/peers.py "${ARGS[@]}"
