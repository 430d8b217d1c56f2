#!/usr/bin/env bash
# Regenerates scripts/gateway.profdata, the profile scripts/release-build.sh optimizes with:
# builds an instrumented gateway (its own scratch path, .build/pgo-gen), runs it under the
# training loads of benchmarks/pgo_train.py, and merges the counts. Run it after a change to the
# request path, then rebuild (`scripts/release-build.sh` picks the new profile up).
#   scripts/pgo-train.sh          SECS=5 seconds per load
# Needs what `benchmarks/peers.sh --install` installs (nginx, nghttp2-client, wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nginx h2load wrk; do
    command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "pgo-train: missing $tool (benchmarks/peers.sh --install installs it)" >&2; exit 1; }
done
swift_bin=$(dirname "$(readlink -f "$(command -v "${SWIFT:-swift}")")")
profdata="$swift_bin/llvm-profdata"
runtime=$(ls "$swift_bin"/../lib/clang/*/lib/linux/libclang_rt.profile-x86_64.a | head -n 1)
[ -x "$profdata" ] && [ -f "$runtime" ] || { echo "pgo-train: llvm-profdata or the profile runtime is missing next to swift" >&2; exit 1; }
scratch=.build/pgo-gen
raw=$scratch/profraw
rm -rf "$raw"
PGO_FLAGS="-Xswiftc -Xfrontend -Xswiftc -ir-profile-generate=$PWD/$raw/default.profraw \
  -Xlinker $runtime -Xlinker -u__llvm_profile_runtime" \
  scripts/release-build.sh --scratch-path "$scratch" --product gateway
BIN="$PWD/$scratch/release" PROFRAW_DIR="$raw" python3 benchmarks/pgo_train.py
# Sparse: functions never run are left out (a tenth of the size).
"$profdata" merge --sparse -o scripts/gateway.profdata "$raw"/*.profraw
echo "scripts/gateway.profdata: $(wc -c < scripts/gateway.profdata) bytes from $(ls "$raw"/*.profraw | wc -l) processes"
