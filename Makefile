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
