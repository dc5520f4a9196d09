"""The second instruction path of `make test-isa` is really taken: with ATEN_CPU_CAPABILITY set,
torch's CPU kernels report that capability (a misspelt value would silently keep the default path,
and the rerun would prove nothing)."""
import os
import subprocess
import sys

import pytest
import torch

from drl.provenance import ISA_VARIABLES

pytestmark = pytest.mark.rounding


@pytest.mark.skipif("ATEN_CPU_CAPABILITY" not in os.environ, reason="no instruction path forced (make test-isa does)")
def test_the_forced_instruction_path_is_in_use():
    assert torch.backends.cpu.get_cpu_capability() == os.environ["ATEN_CPU_CAPABILITY"].upper()
    # and it is another path than the machine's own (what a process without the variables gets)
    env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}
    native = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                            env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert native != torch.backends.cpu.get_cpu_capability()


@pytest.mark.skipif("ATEN_CPU_CAPABILITY" not in os.environ, reason="no instruction path forced (make test-isa does)")
def test_the_forced_path_compiles_into_its_own_inductor_cache():
    """Inductor's cache key does not include the forced path: a kernel the native path compiled, loaded
    here, gave 1e31 and NaN on an AVX-512 CPU.  tests/conftest.py gives this session a fresh cache."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    assert os.path.realpath(cache_dir()) != os.path.realpath(default_cache_dir())
