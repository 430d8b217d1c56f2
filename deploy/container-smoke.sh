#!/usr/bin/env bash
# Builds the Dockerfile's runtime stage with podman and smoke-tests the image: non-root user,
# --version, /health/live and the HEALTHCHECK, a proxied request, SIGTERM → exit 0.
#
# For machines without a container registry (the project's CI machines reach only Debian's
# packages): the base image is a debootstrap of Debian 12 imported into podman, and the build
# stage is replaced (--build-context build=...) by a release binary built on the host the same way
# the build stage builds it. With a registry, `podman build .` builds both stages as written.
#
#   apt-get install podman runc debootstrap && deploy/container-smoke.sh
#
# Needs root. This sandbox's podman needs runc (crun fails: "cgroups in hybrid mode not
# supported") and explicit ulimits (the default RLIMIT_NOFILE/NPROC raise is refused).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/gateway-smoke.XXXXXX)
name="gateway-smoke-$$"
trap 'podman rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
printf '[containers]\ndefault_ulimits=[]\n' > "$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"
podman_run=(podman --runtime runc)
limits=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

base=localhost/gateway-smoke-debian-bookworm
if ! podman image exists "$base"; then
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >/dev/null
  tar -C "$work/rootfs" -c . | podman import - "$base" >/dev/null
  rm -rf "$work/rootfs"
fi

GATEWAY_GIT_COMMIT=$(git rev-parse --short HEAD) scripts/release-build.sh --product gateway --static-swift-stdlib
install -D -s -m 0755 "$(scripts/release-build.sh --show-bin-path)/gateway" "$work/prebuilt/staging/usr/local/bin/gateway"

"${podman_run[@]}" build --format docker --network host "${limits[@]}" \
  --build-context build="$work/prebuilt" --build-arg RUNTIME_IMAGE="$base" \
  -t localhost/barberpro-gateway:smoke -f Dockerfile . >/dev/null

cat > "$work/gateway.yaml" <<'EOF'
listeners:
  - name: plain
    address: 127.0.0.1:18480
admin:
  address: 127.0.0.1:19480
timeouts: { drain_delay: 1s }
upstreams:
  self:
    endpoints: [127.0.0.1:19480]
routes:
  - name: health
    match: { path_prefix: /health/ }
    upstream: self
EOF
chmod 0755 "$work"; chmod 0644 "$work/gateway.yaml"

"${podman_run[@]}" run -d --name "$name" --network host "${limits[@]}" -e GATEWAY_HEALTH_PORT=19480 \
  -v "$work/gateway.yaml:/etc/gateway/gateway.yaml:ro" localhost/barberpro-gateway:smoke >/dev/null
for _ in $(seq 50); do
  curl -fsS http://127.0.0.1:19480/health/live >/dev/null 2>&1 && break
  sleep 0.2
done
fail() { echo "container smoke: FAILED: $*" >&2; podman logs "$name" >&2 || true; exit 1; }
[ "$(podman exec "$name" id -u)" = 10001 ] || fail "not running as uid 10001"
podman exec "$name" /usr/local/bin/gateway --version | grep -q '^openssl: OpenSSL 3' || fail "--version"
curl -fsS http://127.0.0.1:19480/health/live | grep -q live || fail "/health/live"
podman healthcheck run "$name" 2>/dev/null || fail "HEALTHCHECK"
# A request through a listener, routed and proxied (to the admin listener's /health/ready).
[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18480/health/ready)" = 200 ] || fail "plain listener"
podman stop -t 30 "$name" >/dev/null
[ "$(podman inspect "$name" --format '{{.State.ExitCode}}')" = 0 ] || fail "exit code after SIGTERM"
echo "container smoke: passed (image localhost/barberpro-gateway:smoke, $(podman image inspect localhost/barberpro-gateway:smoke --format '{{.Size}}') bytes)"
