"""Benchmark harness: this machine's matmul/conv ceiling, the DRL workloads as model FLOP utilisation
(MFU) of it, and the GPU check; one entry point, ``python -m bench.run`` (``make bench``)."""
