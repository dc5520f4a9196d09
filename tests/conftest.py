"""Test ordering: the SLURM test is scheduled last.  On a forced instruction path, compiled kernels of their own.

Once SLURM's client tools are installed (tests/test_slurm.py installs them on CI) but no controller
answers, every later `snakemake` start spends about 10 s in the SLURM executor plugin's import-time
`scontrol show config` probe, which waits for its timeout.  Run last, the e2e tests before it start
snakemake without that wait; the test itself talks to a running cluster, which answers at once.

Inductor's on-disk cache (torch.compile) does not tell the instruction paths apart: on an AVX-512 CPU, a
kernel compiled by `make test` on the native path and then loaded by `make test-isa` under
ATEN_CPU_CAPABILITY=avx2 returned values of 1e31 and NaN instead of the eager chain's.  So a session
with an instruction path forced compiles into a fresh cache of its own, removed at its end."""
import os
import shutil
import tempfile

from drl.provenance import ISA_VARIABLES

_own_cache = None


def pytest_configure(config):
    global _own_cache
    if any(k in os.environ for k in ISA_VARIABLES) and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        _own_cache = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-forced-isa-")


def pytest_unconfigure(config):
    if _own_cache:
        shutil.rmtree(_own_cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)  # stable: order kept otherwise
