# Switchyard: `make demo` runs the main job on throwaway local databases; `make test` runs every
# test (installing what it needs first). `make bench` is separate and never part of `make test`.

SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PG_BIN ?= $(shell ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
DEMO_USERS ?= 100000
TEST_THREADS ?= 2

.PHONY: deps deps-bench build test demo bench lint clean

## deps: install on a fresh Debian machine what the tests and the demo need.
deps:
	@if [ ! -x "$(PG_BIN)/initdb" ] || ! command -v psql >/dev/null; then \
		echo "installing PostgreSQL server binaries"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null \
		|| $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null; \
	fi
	@id postgres >/dev/null 2>&1 || $(SUDO) useradd --system --home /var/lib/postgresql postgres
# pgbouncer: tests start their own on a free port; the package's own service is never used.
	@command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || { \
		echo "installing pgbouncer"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }
	@command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
	@cargo clippy --version >/dev/null 2>&1 || rustup component add clippy >/dev/null 2>&1 || echo "warning: clippy unavailable; make lint will be skipped"
	@echo "deps ok: $$(ls -d /usr/lib/postgresql/*/bin | tail -1), $$( (/usr/sbin/pgbouncer --version || pgbouncer --version) 2>/dev/null | head -1), $$(cargo --version)"

## deps-bench: the peers the benchmark compares against (pgcopydb), and perf for --profile.
deps-bench: deps
	@command -v pgcopydb >/dev/null || $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgcopydb >/dev/null
	@command -v perf >/dev/null || $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null

## bench: Switchyard vs pgcopydb, native logical replication, pg_dump and bare COPY (BENCH_SCALE=1).
BENCH_SCALE ?= 1
bench: deps-bench
	cargo build --release -p switchyard -p switchyard-bench
	./target/release/switchyard-bench --scale $(BENCH_SCALE)

build:
	cargo build --workspace --all-targets

## test: unit tests and end-to-end tests against private PostgreSQL clusters.
test: deps lint
	cargo test --workspace --no-fail-fast -- --test-threads $(TEST_THREADS)

## demo: two throwaway clusters, 100k users + 1M orders, a live write load, the tenantize pipeline.
demo: deps
	cargo build --release
	./target/release/switchyard demo --users $(DEMO_USERS)

lint:
	@if cargo clippy --version >/dev/null 2>&1; then cargo clippy --workspace --all-targets -- -D warnings; \
	else echo "warning: clippy unavailable, lint skipped"; fi

clean:
	cargo clean
