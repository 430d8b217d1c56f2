# BarberPro Gateway: multi-stage build. The build stage compiles a release binary with the Swift
# runtime and Foundation linked statically; the runtime stage is Debian 12 slim with only the C
# libraries the binary loads (OpenSSL 3, nghttp2, hiredis 0.14), running as an unprivileged user.
#
#   docker build --build-arg GIT_COMMIT=$(git rev-parse --short HEAD) -t barberpro-gateway .
#   docker run -p 8443:8443 -v $PWD/gateway.yaml:/etc/gateway/gateway.yaml:ro \
#     -v $PWD/certs:/etc/gateway/certs:ro barberpro-gateway
#
# Config and certificates come from mounts (/etc/gateway) or, through ${VAR} substitution in
# gateway.yaml, from the environment (TLS_CERT, TLS_KEY, REDIS_URL, ...). GATEWAY_CONFIG names the
# file; GATEWAY_HEALTH_PORT is the listener the HEALTHCHECK asks (the admin one by default, which
# must then listen on 0.0.0.0 or 127.0.0.1 inside the container).
ARG SWIFT_IMAGE=swift:6.3.1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${SWIFT_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev libnghttp2-dev libhiredis-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first: this layer is reused while only the sources change.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
COPY scripts/release-build.sh scripts/gateway.profdata ./scripts/
ARG GIT_COMMIT=unknown
RUN GATEWAY_GIT_COMMIT="${GIT_COMMIT}" scripts/release-build.sh --product gateway --static-swift-stdlib \
    && install -D -s -m 0755 "$(scripts/release-build.sh --show-bin-path)/gateway" /staging/usr/local/bin/gateway

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 libnghttp2-14 libhiredis0.14 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/gateway
COPY --from=build /staging/usr/local/bin/gateway /usr/local/bin/gateway
ENV GATEWAY_CONFIG=/etc/gateway/gateway.yaml \
    GATEWAY_HEALTH_PORT=9901
USER 10001:10001
EXPOSE 8443 8080 9901
# bash's /dev/tcp: no curl (and its dozen libraries) in the image just for a probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${GATEWAY_HEALTH_PORT} && printf 'GET /health/live HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# The gateway drains on SIGTERM (readiness 503 for timeouts.drain_delay, then close and drain).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["run"]
