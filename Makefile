# cachetx: `make demo` runs the scenario, `make test` runs every test.
# Every target installs what it needs first (through `make deps`).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION := $(shell sed -n 's/^pgrx = "=\(.*\)"/\1/p' Cargo.toml)
DEB_PACKAGES := postgresql-15 postgresql-server-dev-15 libclang-dev clang pkg-config redis-server redis-tools
NSCACHE_MODULE := $(CURDIR)/target/release/libnscache.so
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
PGRX_SUDO := $(if $(filter 0,$(shell id -u)),,--sudo)

export NSCACHE_MODULE

.PHONY: help deps build build/redis build/pg test test/unit test/integration test/redis test/pg lint demo bench bench-redis bench-pg clean

help: ## Show this help
	@grep -hE '^[a-zA-Z/_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: ## Install the Debian packages and the pinned cargo-pgrx when missing (idempotent)
	@if ! dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then \
	    echo "==> installing Debian packages: $(DEB_PACKAGES)"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES); \
	else echo "==> Debian packages present"; fi
	@if ! cargo pgrx --version 2>/dev/null | grep -qx 'cargo-pgrx $(PGRX_VERSION)'; then \
	    echo "==> installing cargo-pgrx $(PGRX_VERSION) (takes ~9 min once)"; \
	    cargo install cargo-pgrx --version $(PGRX_VERSION) --locked; \
	else echo "==> cargo-pgrx $(PGRX_VERSION) present"; fi
	@if ! grep -qs 'pg15 = "$(PG_CONFIG)"' $${PGRX_HOME:-$$HOME/.pgrx}/config.toml; then \
	    cargo pgrx init --pg15 $(PG_CONFIG); \
	fi

build: deps build/redis build/pg ## Release build of the Redis module and install of the Postgres extension

build/redis:
	cargo build --release -p nscache

build/pg:
	cargo pgrx install --release -p txevents --pg-config $(PG_CONFIG) $(PGRX_SUDO)

test: build lint test/unit test/integration ## deps + build + lint + unit tests + integration tests against real servers

test/unit: ## Unit tests of the pure logic (shared crate, module and extension logic)
	cargo test -p cachetx-shared -p nscache -p txevents

test/integration: ## All integration tests against real servers
	cargo test -p cachetx-tests

test/redis: ## Integration tests against a real redis-server with the module only
	cargo test -p cachetx-tests --test 'redis_*'

test/pg: ## Integration tests against a private Postgres cluster with the extension only
	cargo test -p cachetx-tests --test 'pg_*'

lint: ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy -p cachetx-shared -p nscache -p cachetx-tests -p txevents --all-targets -- -D warnings

demo: build ## Start private servers (or use REDIS_*/DATABASE_URL), run the scenario, stop them
	scripts/demo.sh

bench: bench-redis bench-pg ## All benchmarks; results appended to bench/RESULTS.md

bench-redis: build ## redis-benchmark: plain GET/SET vs NSCACHE vs the Lua alternative; INVALIDATE; bytes per entry
	scripts/bench-redis.sh

bench-pg: build ## pgbench: plain insert vs txevents.emit vs hand-written outbox; poll+ack; notify latency
	scripts/bench-pg.sh

clean: ## Remove build output
	cargo clean
