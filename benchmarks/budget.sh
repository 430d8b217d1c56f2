#!/usr/bin/env bash
# Per-request budget of the gateway and HAProxy in one run: mallocs (LD_PRELOAD counter), system
# calls by name (strace -c) and user/system CPU µs per request, HTTP/1.1 and HTTP/2 over TLS.
# benchmarks/budget.py has the details.
#   benchmarks/budget.sh [--save]      N=20000 ROUNDS=3 SERVERS="gateway haproxy"
# Needs what benchmarks/peers.sh --install installs, plus strace and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { echo "missing: strace (apt-get install strace)" >&2; exit 1; }
scripts/release-build.sh >/dev/null
export BIN=$(scripts/release-build.sh --show-bin-path)
exec python3 benchmarks/budget.py "$@"
