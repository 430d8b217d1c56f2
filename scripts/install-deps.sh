#!/usr/bin/env bash
# Installs what `make run` / `make test` need on Debian 12, only what is missing.
# Uses sudo only when not root.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

packages=(libssl-dev libnghttp2-dev libhiredis-dev pkg-config openssl curl)
if [ "${1:-}" = "test" ]; then
  packages+=(nghttp2-client redis-server)
  packages+=(prometheus)  # promtool checks deploy/prometheus/alerts.yaml (test_operations)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "test" ]; then
  python3 - <<'PY' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check httpx h2 pytest cryptography pyjwt websockets opentelemetry-proto
import httpx, h2, pytest, cryptography, jwt, websockets, opentelemetry.proto
PY
  python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check pyyaml
fi
