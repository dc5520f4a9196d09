"""What a number was measured with: the machine (CPU model, instruction set in use, library versions,
threads, device) and the feature extractor's file hash.  Written beside every metrics file, not into
it, so that a diff of two metrics files can tell a change of model from a change of machine or of
measuring instrument."""
from __future__ import annotations

import os
import platform
from pathlib import Path

# Environment variables that select the CPU kernels (ATen, MKL, oneDNN): recorded when set, because
# they change the float32 rounding of every matrix product and convolution.
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine(device: str = "cpu") -> dict:
    """The machine a stage ran on, as JSON-ready values."""
    import numpy
    import torch

    flags = cpu_flags()
    out = {"cpu": cpu_model(), "cpu_has": [f for f in ("avx2", "avx512f", "amx_tile") if f in flags],
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
           "device": str(device), "isa_overrides": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ}}
    if torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out
