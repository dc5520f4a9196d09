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

.PHONY: install demo test test-isa test-all clean-demo gpu-wheels

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) demo
	@echo "metrics: results/demo/metrics/*.json   figures: results/demo/figures/*.png"

# pytest-xdist: TEST_WORKERS processes (0: one, as plain pytest), each taking whole test files, so that a
# file's module-scoped fixtures (test_workflow's snakemake/dvc project) stay in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile
	$(MAKE) --no-print-directory test-isa

# make test-isa: the rounding-sensitive tests (marker `rounding`) again on a second CPU instruction path,
# so that their tolerances are proven on two kernel sequences on any machine: on an AVX-512 CPU the AVX2
# kernels, elsewhere the generic (no AVX) ones.  tests/test_rounding_path.py checks that torch took it.
ISA_PATH := $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null \
	&& echo "ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2" \
	|| echo "ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41")
test-isa: $(STAMP)
	env $(ISA_PATH) $(BIN)/python -m pytest -m rounding -p no:cacheprovider

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

clean-demo:
	rm -rf results/demo/runs data/prepared logs .snakemake

# make bench: the benchmark's one entry point (python -m bench.run): this machine's matmul / 3x3-conv
# ceiling, then the DRL workloads' FLOP/s as a fraction of it (MFU, FLOPs by FlopCounterMode); appends a
# dated row per variant to bench/RESULTS.md.  Options through BENCH_ARGS, e.g. BENCH_ARGS="--quick",
# "--workloads toy_mlp", "--ddp" (DDP weak scaling), "--kernels" (where an iteration's time goes) or
# "--check OUT" (the GPU check that bench/gpu_check.sh runs).
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# make gpu-wheels: the packages bench/gpu_check.sh needs that a GPU machine's own PyTorch image may lack
# (jsonschema and its dependencies, torch-fidelity), as wheels for its Python (3.12, x86-64 Linux) in
# .whl/, at the versions this project is tested with; gpu_check.sh installs them when it finds .whl/.
GPU_PY ?= 3.12
GPU_WHEELS ?= jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
	torch-fidelity==0.4.0
gpu-wheels: $(STAMP)
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)
	@ls .whl
