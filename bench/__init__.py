"""Benchmark harness: this machine's matmul/conv ceiling, then the DRL workloads as model
FLOP utilisation (MFU) of that ceiling.  ``python -m bench.run`` (``make bench``) and
``bench/gpu_check.sh``; numbers land in ``bench/latest.json`` and ``bench/RESULTS.md``."""
