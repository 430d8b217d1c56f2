#!/usr/bin/env bash
# Generates a throwaway development certificate (never committed) into DIR (default certs/).
set -euo pipefail
dir="${1:-certs}"
mkdir -p "$dir"
if [ -s "$dir/dev.crt" ] && [ -s "$dir/dev.key" ]; then exit 0; fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=localhost/O=BarberPro development" \
  -addext "subjectAltName=DNS:localhost,DNS:api.barberpro.com.ar,DNS:*.barberpro.com.ar,IP:127.0.0.1,IP:::1" \
  -keyout "$dir/dev.key" -out "$dir/dev.crt" 2>/dev/null
chmod 600 "$dir/dev.key"
echo "generated $dir/dev.crt and $dir/dev.key (development only)"
