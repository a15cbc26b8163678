# Entry points for people and CI. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Directory of the pinned tools (etcd, kube-apiserver, spire-server, ...) for the current
# pins; computing it builds nothing. The harness reads it from SPIRE_RS_TOOLS_BIN.
TOOLS_BIN := $(shell bash e2e/tools/install.sh --print-bin)
export SPIRE_RS_TOOLS_BIN := $(TOOLS_BIN)

# Scenarios mostly wait on real components starting, so four at a time fit in 2 cores
# (the smoke suite: 37 s with two threads, 22 s with six, never a collision).
TEST_THREADS ?= 4

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## Build the pinned external tools into the cache outside the clone (idempotent).
	@bash e2e/tools/install.sh

.PHONY: print-tools-bin
print-tools-bin: ## Print the directory holding the pinned tools.
	@echo $(TOOLS_BIN)

.PHONY: build
build: ## Build all crates and binaries.
	cargo build --workspace --all-targets

.PHONY: images
images: tools ## Build OCI image archives of the whole stack into target/images (no Docker; see images/README.md).
	cargo run --release --quiet -p e2e --bin images -- --out target/images

.PHONY: demo
demo: tools ## Start the local stack and show a workload receiving its SPIFFE identity (Ctrl-C stops it).
	cargo build --workspace --bins
	./target/debug/demo

GO_FIELDS := operator/src/template/go_fields.json
GO_ENV := GOTOOLCHAIN=local GOSUMDB=off GOFLAGS=-mod=readonly

.PHONY: generate
generate: ## Regenerate checked-in generated files (the Go field table templates use).
	cd e2e/tools/gofields && $(GO_ENV) go run . > $(CURDIR)/$(GO_FIELDS)

.PHONY: check-generated
check-generated: ## Fail when a checked-in generated file is stale.
	cd e2e/tools/gofields && $(GO_ENV) go run . | diff -u $(CURDIR)/$(GO_FIELDS) - \
		|| { echo "$(GO_FIELDS) is stale: run make generate" >&2; exit 1; }

# Benchmark sizes; `make bench BENCH_ARGS="--pods 500 --runs 1 --idle-secs 30 --churn-secs 10"`
# is a short smoke run. See docs/benchmarks.md.
BENCH_ARGS ?=

.PHONY: bench
bench: tools ## Ours vs spire-controller-manager and the Go spiffe-csi-driver side by side (release build; not part of make test).
	cargo build --release -p spire-operator
	cargo run --release --quiet -p e2e --bin bench -- $(BENCH_ARGS)

.PHONY: fuzz
fuzz: ## Fuzz each target FUZZ_SECONDS (default 60) with cargo-afl + AFL++ (installs both, pinned; see fuzz/README.md).
	bash fuzz/run.sh

.PHONY: fmt
fmt: ## Format the code.
	cargo fmt --all

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors.
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	@# fuzz/ is a workspace of its own: its lock file must follow the crates it fuzzes,
	@# or `make fuzz` (--locked) breaks without anything else noticing.
	cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml > /dev/null

.PHONY: test
test: tools lint check-generated ## Everything CI runs: tools, lint, generated files, unit and e2e tests.
	mkdir -p target
	cargo test --workspace -- --test-threads=$(TEST_THREADS) 2>&1 | tee target/test.log
	@# cargo prints one result line per test binary; the total is what a reader wants.
	@awk '/^test result:/ { p += $$4; f += $$6; s += $$8 } END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' target/test.log
