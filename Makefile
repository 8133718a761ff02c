# The two commands: `make run` brings the whole fleet up locally; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
export FLEET_CONFIG ?= $(CURDIR)/deploy/local/fleet.toml
STACK := deploy/local/stack.sh

.PHONY: help run test test-run bench lint stack stack-down toolchain deploy-test

help:
	@echo "make run     start NATS/Postgres/Redis if needed, then every worker (fleetctl up)"
	@echo "make test    start the services if needed, then run every test (nextest)"
	@echo "make bench   run every fleet-bench benchmark (release build)"
	@echo "make lint    rustfmt check and clippy -D warnings"
	@echo "make deploy-test  run the compose stack in containers and check its effects; validate the k8s manifests"
	@echo "make stack-down  stop the private servers make run/test started"

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo is missing: install Rust from https://rustup.rs (Debian's cargo is too old), then re-run" >&2; exit 1; }

stack:
	@$(STACK) up

stack-down:
	@$(STACK) down

run: toolchain stack
	$(CARGO) build --release -p fleetctl
	./target/release/fleetctl up

# Tests create their databases on a throwaway PostgreSQL of their own (in memory, no fsync;
# see stack.sh test-pg-up), deleted after the run. Set TEST_DATABASE_URL to use another server.
test: toolchain stack
	@$(STACK) test-tools
	@if [[ -n "$${TEST_DATABASE_URL:-}" ]]; then exec $(MAKE) --no-print-directory test-run; fi; \
	url="$$($(STACK) test-pg-up)" || exit 1; \
	trap '$(STACK) test-pg-down' EXIT; trap 'exit 130' INT TERM; \
	TEST_DATABASE_URL="$$url" $(MAKE) --no-print-directory test-run

test-run:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		echo "cargo-nextest not found: using cargo test (install: cargo install cargo-nextest --locked)"; \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

bench: toolchain stack
	$(CARGO) build --release -p fleet-bench -p provisioner -p cache-invalidator -p backfill-worker -p scheduler -p fleetctl
	./target/release/fleet-bench provision --tenants 200 --concurrency 1
	./target/release/fleet-bench provision --tenants 200 --concurrency 4
	./target/release/fleet-bench invalidate
	./target/release/fleet-bench backfill
	./target/release/fleet-bench finalize
	./target/release/fleet-bench fanout
	./target/release/fleet-bench consume
	./target/release/fleet-bench console
	./target/release/fleet-bench move

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Not part of `make test`: it builds release binaries and container images (about 10 minutes
# on a fresh machine). Needs podman (installed when run as root) and python3.
deploy-test: toolchain
	deploy/test/k8s.sh
	deploy/test/compose.sh
