#!/usr/bin/env bash
# CPU per request with workers: 1 and workers: 2 (benchmarks/workers.py has the details).
#   benchmarks/workers.sh            N=100000 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/release-build.sh >/dev/null
export BIN=$(scripts/release-build.sh --show-bin-path)
exec python3 benchmarks/workers.py "$@"
