#!/usr/bin/env bash
# The release build every make target, benchmark and container uses:
#   scripts/release-build.sh [swift build arguments...]   e.g. --product gateway, --show-bin-path
# Dynamic exclusivity checks are off in release, on every module (swift-nio's included): in
# interleaved A/B runs that was 9–11% less CPU per HTTP/1.1 request (h2: 0–13%); see
# benchmarks/results/2026-11-30-session3.md. Debug builds, which `make test` runs, keep them, so
# a conflicting access the tests reach still traps there. Cross-module optimization (every module,
# so swift-nio's generic code is specialized into the gateway's) is ~2% less CPU per HTTP/2
# request (HTTP/1.1: within the harness's noise), read with benchmarks/paired.py (benchmarks/results/2026-12-02-session17.md).
# The Swift runtime and Foundation are linked in (`--static-swift-stdlib`), as the container ships
# them: benchmarks measure the binary that is deployed, and it is ~5% less CPU per request than
# one loading libswiftCore.so (paired runs: h2 0.91–1.00, h1 0.92–0.97; 55 of 80 pairs lower;
# benchmarks/results/2026-12-02-session20.md).
# Profile-guided: LLVM optimizes with the counts of scripts/gateway.profdata (made by
# scripts/pgo-train.sh from a training run under load): ~9% less CPU per HTTP/2 request, ~5% per
# HTTP/1.1 one (benchmarks/results/2026-12-02-session21.md). A profile older than the code still
# builds; functions changed since it was made are optimized without counts. The profile is
# passed under a name made of its hash, so a new one changes the command line and SwiftPM rebuilds.
# Objects are always rewritten (Swift otherwise keeps an object whose IR is unchanged, and the
# profile is applied after that check). PGO_FLAGS replaces the profile (scripts/pgo-train.sh
# builds the instrumented binary through it).
# Copies and destroys of values the compiler outlines (an optional class reference, a `String?`,
# an enum with payloads) are written out for their type (`-disable-type-layout`), not sent
# through the type's value witnesses, which by default they are at -O (smaller code: a metadata
# lookup and an indirect call, ~80 instructions where a nil check and a retain would do): −3.3%
# instructions per HTTP/2 request and −3.5% per HTTP/1.1 one, 0.977 of the CPU per HTTP/2 request
# in paired runs (benchmarks/results/2026-12-03-session29.md), for 0.4% more code.
# Lexical lifetimes off (`-enable-lexical-lifetimes=false`, Swift's rule before 5.7): a value may
# be released after its last use rather than at the end of its scope, which lets the optimizer pair
# and drop more retains and releases: −4.7% instructions per HTTP/2 request (retain/release ~40
# calls fewer), −2.9% per HTTP/1.1 one, 0.980 of the CPU per HTTP/2 request in paired runs. No
# code may count on a scope to keep an object alive: what C holds unretained (nghttp2's and the
# TLS BIO's user data, hiredis's reply tape, a stream being received) is held by a stored property
# of its owner, and `make release-check` runs the integration suite against this build.
# Partial specialization of generics (`-sil-partial-specialization`, every module): a generic
# function called with some of its parameters concrete gets a copy specialized for those. Without
# it, swift-nio's `BaseStreamSocketChannel<Socket>.bufferPendingWrite` (generic over its socket
# type) called `unwrapData<Self, IOData>` unspecialized, and that ran a runtime cast
# (`swift_dynamicCast`, plus a generic-metadata lookup) on every socket write: 2.0 dynamic casts per
# keep-alive HTTP/1.1 request → 0, −2.7% instructions per h1 request outside OpenSSL, −1.3% per h2
# one; paired CPU 0.995 (h1) and 0.997 (h2) (benchmarks/results/2026-12-05-session37.md).
# All callers must pass the same flags: a plain `swift build -c release` would rebuild everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
flags=(-c release -Xswiftc -enforce-exclusivity=unchecked -Xswiftc -cross-module-optimization --static-swift-stdlib
       -Xswiftc -Xfrontend -Xswiftc -disable-incremental-llvm-codegen
       -Xswiftc -Xfrontend -Xswiftc -disable-type-layout
       -Xswiftc -Xfrontend -Xswiftc -enable-lexical-lifetimes=false
       -Xswiftc -Xllvm -Xswiftc -sil-partial-specialization)
if [ -n "${PGO_FLAGS:-}" ]; then
    read -r -a pgo <<< "$PGO_FLAGS"
    flags+=("${pgo[@]}")
elif [ -f "$root/scripts/gateway.profdata" ]; then
    profile="$root/.build/pgo/$(sha256sum "$root/scripts/gateway.profdata" | cut -c1-16).profdata"
    [ -f "$profile" ] || { mkdir -p "$root/.build/pgo"; cp "$root/scripts/gateway.profdata" "$profile"; }
    flags+=(-Xswiftc -Xfrontend -Xswiftc "-ir-profile-use=$profile")
fi
exec "${SWIFT:-swift}" build "${flags[@]}" "$@"
