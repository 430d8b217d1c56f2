#!/usr/bin/env bash
# The release build every make target, benchmark and container uses:
#   scripts/release-build.sh [swift build arguments...]   e.g. --product gateway, --show-bin-path
# Dynamic exclusivity checks are off in release, on every module (swift-nio's included): in
# interleaved A/B runs that was 9–11% less CPU per HTTP/1.1 request (h2: 0–13%); see
# benchmarks/results/2026-11-30-session3.md. Debug builds, which `make test` runs, keep them, so
# a conflicting access the tests reach still traps there. Cross-module optimization (every module,
# so swift-nio's generic code is specialized into the gateway's) is ~2% less CPU per HTTP/2
# request (HTTP/1.1: within the harness's noise), read with benchmarks/paired.py (benchmarks/results/2026-12-02-session17.md).
# All callers must pass the same flags: a plain `swift build -c release` would rebuild everything.
set -euo pipefail
exec "${SWIFT:-swift}" build -c release -Xswiftc -enforce-exclusivity=unchecked -Xswiftc -cross-module-optimization "$@"
