# The two commands of the README:
#   make demo   create .venv, install drl and its dependencies, run the demo pipeline
#   make test   create .venv, install drl with its test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
CORES ?= all
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install demo test test-all clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) demo
	@echo "metrics: results/demo/metrics/*.json   figures: results/demo/figures/*.png"

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

clean-demo:
	rm -rf results/demo/runs data/prepared logs .snakemake

# make bench: issue 6's benchmark harness (bench/run.py): this machine's matmul / 3x3-conv ceiling, then
# the DRL workloads' FLOP/s as a fraction of it (MFU); writes bench/latest.json and appends a dated row
# to bench/RESULTS.md.  Options through BENCH_ARGS, e.g. BENCH_ARGS="--quick" or "--workloads toy_mlp".
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
