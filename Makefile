# ringkv — the two commands of the README are `make run` and `make test`.
# Everything else here is for developers.
#
# Cargo's target directory lives outside the clone so that a fresh clone
# (CI, a second checkout) reuses the 12-minute RocksDB build.

CARGO_TARGET_DIR ?= $(HOME)/.cache/ringkv-target
export CARGO_TARGET_DIR
CARGO ?= cargo
DIR ?= ringkv-data/playground
RINGKV := $(CARGO_TARGET_DIR)/release/ringkv

.PHONY: setup build run test lint fmt bench bench-shards chaos clean-data

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --bin ringkv

# The main job: a local cluster on 127.0.0.1, until Ctrl-C.
run: build
	$(RINGKV) playground --dir $(DIR) --storenodes 3 --placement 3 --shards 16

# The whole test suite (unit, in-process cluster and multi-process tests).
test: setup
	$(CARGO) test --workspace --all-targets --no-fail-fast

lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# ringkv against etcd, same machine, same sitting, one harness: the standard
# loads (puts, gets, YCSB A/B/C/F, 1/64/256 clients) through a playground's
# router and through etcd's KV API, CPU per op from /proc, a side-by-side
# table (scripts/bench.sh; DURATION=seconds per phase, default 10;
# ALTERNATE=N: etcd and ringkv up together, puts and gets in turn, N rounds).
bench: build
	bash scripts/bench.sh $(RINGKV) $(if $(OUT),$(OUT))

# Throughput through the router with 16, 64 and 256 shards on 3 storenodes.
bench-shards: build
	bash scripts/bench-shards.sh $(RINGKV) 16 64 256

# The long fault-injection run (root), in a network namespace of its own:
#   make chaos DURATION=30m [SEED=n] [NEMESIS=kill,isolate,...]   (see docs/fault-injection.md)
DURATION ?= 30m
chaos: build
	bash scripts/chaos.sh $(RINGKV) --duration $(DURATION) --out ringkv-data/chaos-$$(date +%Y%m%d-%H%M%S) \
		$(if $(SEED),--seed $(SEED)) $(if $(NEMESIS),--nemesis $(NEMESIS))

clean-data:
	rm -rf ringkv-data
