#!/usr/bin/env bash
# The GPU check (python -m bench.run --check, bench/check.py): correctness of the CUDA paths against CPU
# float64, training MFU of the paper's CIFAR-10 network (N = 8, B = 256, K = 30) in bf16 and fp32, sampling
# and Inception throughput, projected 50k-iteration run and FID-50k times, the perf variants (with and
# without CUDA graphs), and with more than one GPU DDP weak scaling.
#
#   bench/gpu_check.sh OUT_DIR [--smoke] [--budget-s SECONDS]
#
# Needs only the project tree.  Python: $PYTHON if set, else .venv/bin/python if it runs, else python3 (a
# GPU machine's own PyTorch).  Packages that interpreter lacks can come as wheels in .whl/ (`make
# gpu-wheels` on a machine with PyPI; $DRL_WHEELS names another folder), installed into a temporary
# folder (not OUT_DIR); a pre-flight import names what is still missing before anything runs.
# Prints a short table last; OUT_DIR gets results.json, summary.md, row.md (a row for bench/RESULTS.md),
# log.txt and nvidia-smi.txt.  On an H200 about 2-5 minutes (hard stop: 470 s); without CUDA, or with
# --smoke, tiny sizes on the CPU (a smoke test; its DDP step: the toy MLP on 1 and 2 CPU processes).
set -euo pipefail
if [ $# -lt 1 ] || [[ $1 == -* ]]; then
    echo "usage: bench/gpu_check.sh OUT_DIR [--smoke] [--budget-s SECONDS]" >&2
    exit 2
fi
out=$(realpath -m "$1")
shift
cd "$(dirname "$0")/.."
mkdir -p "$out"
py=${PYTHON:-}
if [ -z "$py" ]; then
    if .venv/bin/python -c "import torch" >/dev/null 2>&1; then py=.venv/bin/python; else py=python3; fi
fi
preflight() { "$py" -c "import torch, yaml, tqdm, scipy, PIL, jsonschema, torch_fidelity" 2>"$out/preflight.txt"; }
wheels=${DRL_WHEELS:-.whl}
if ! preflight && compgen -G "$wheels/*.whl" >/dev/null; then   # wheels only for what is missing
    site=$(mktemp -d)
    trap 'rm -rf "$site"' EXIT   # the wheels' installation, for this run only
    if ! "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$wheels"/*.whl; then
        echo "gpu_check: $py could not install the wheels in $wheels (made for another Python? 'make gpu-wheels GPU_PY=X.Y')" >&2
        exit 2
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! preflight; then
    echo "gpu_check: $py cannot import what the bench needs:" >&2
    tail -1 "$out/preflight.txt" >&2
    echo "fix: run 'make gpu-wheels' on a machine with PyPI and bring .whl/ along (or 'make install' where PyPI is reachable)" >&2
    exit 2
fi
{ command -v nvidia-smi >/dev/null && nvidia-smi; } > "$out/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$out/nvidia-smi.txt"
timeout --signal=TERM --kill-after=10 470 "$py" -m bench.run --check "$out" "$@" 2>&1 | tee "$out/log.txt"
