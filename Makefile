# BarberPro Gateway. `make run` and `make test` work on a fresh Debian 12 machine: each installs
# the apt/pip packages it needs first.
SWIFT ?= swift
PYTHON ?= python3
UPSTREAM_PORT ?= 3001

.PHONY: all build release pgo deps test-deps certs run test unit-test integration-test release-check fuzz clean

all: build

deps:
	@scripts/install-deps.sh

test-deps:
	@scripts/install-deps.sh test

build: deps
	$(SWIFT) build

release: deps
	SWIFT=$(SWIFT) scripts/release-build.sh

# Regenerates scripts/gateway.profdata, the profile the release build is optimized with (after a
# change to the request path): an instrumented build under the benchmark loads.
pgo: deps
	SWIFT=$(SWIFT) scripts/pgo-train.sh

certs:
	@scripts/dev-cert.sh certs

# The gateway with gateway.yaml, a generated development certificate and the demo booking
# upstream on 127.0.0.1:$(UPSTREAM_PORT). Ctrl-C stops both.
run: release certs
	@bin=$$(SWIFT=$(SWIFT) scripts/release-build.sh --show-bin-path); \
	$$bin/demo-upstream --port $(UPSTREAM_PORT) & up=$$!; \
	trap 'kill $$up 2>/dev/null' EXIT INT TERM; \
	$$bin/gateway run --config gateway.yaml

test: test-deps
	$(SWIFT) build --build-tests
	scripts/with-redis.sh $(SWIFT) test --skip-build
	$(PYTHON) -m pytest -q Tests/Integration

# The Swift tests alone, with their own throwaway redis-server like `make test`.
unit-test: test-deps
	$(SWIFT) build --build-tests
	scripts/with-redis.sh $(SWIFT) test --skip-build

integration-test: test-deps
	$(SWIFT) build
	$(PYTHON) -m pytest -q Tests/Integration

# The integration suite against the release build (the flags in scripts/release-build.sh change
# how long values live and drop exclusivity checks, so what ships is checked too). Not part of
# `make test`, which stays on debug builds; run it after changing the release flags.
release-check: test-deps
	SWIFT=$(SWIFT) scripts/release-build.sh
	GATEWAY_BIN_DIR=$$(SWIFT=$(SWIFT) scripts/release-build.sh --show-bin-path) $(PYTHON) -m pytest -q Tests/Integration

# The differential fuzz tests of the gateway's HTTP/1.1 parsers (client requests, upstream
# responses) against NIO's llhttp decoders, and of its HTTP/2 request rules against nghttp2's own
# checks, with far more cases than `make test` runs (3,000 each; 20,000 for HTTP/2):
# FUZZ_CASES=N FUZZ_SEED=S to choose.
FUZZ_CASES ?= 200000
fuzz: test-deps
	$(SWIFT) build --build-tests
	FUZZ_CASES=$(FUZZ_CASES) FUZZ_SEED=$${FUZZ_SEED:-$$(date +%s)} $(SWIFT) test --skip-build --filter "HTTP1RequestDifferentialTests|UpstreamResponseDifferentialTests|HTTP2RequestRulesDifferentialTests"

clean:
	rm -rf .build certs
