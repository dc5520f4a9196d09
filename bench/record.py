"""Where results go: the machine's description, ``latest.json`` (atomic, drl.io) and a dated row of
``RESULTS.md``."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from drl.io import write_json, write_text
from drl.provenance import cpu_flags, cpu_model

MARKER = "<!-- bench/run.py appends one row per run and variant below this line -->"
HEADER = ("| date (UTC) | machine | mode, variant | load 1-min (start → end) | ceiling GFLOP/s (start / end / best) "
          "| train MFU: C10 N=2 · N=5 · N=8 | train MFU: toy · digits WRN · digits MLP "
          "| sample MFU: C10 N=8 · toy · digits WRN · digits MLP | eval MFU: HMC · AIS · Inception · classifier "
          "| C10 N=8 train s/iter (B, K) | C10 N=2 B=16: train MFU, s/iter | wall s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


def machine(device: str) -> dict:
    flags = cpu_flags()
    simd = [f for f in ("avx512f", "avx2", "avx", "neon") if f in flags][:1]
    out = {"cpu": cpu_model(), "cores": os.cpu_count(), "simd": simd[0] if simd else None,
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "virtualised": "hypervisor" in flags, "memory_gib": _memory_gib(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "device": device, "python": platform.python_version()}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(device)
        out["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    out["text"] = describe(out)
    return out


def describe(m: dict) -> str:
    s = f"{m['cpu']}, {m['cores']} cores" + (f" {m['simd'].upper()}" if m.get("simd") else "")
    s += f" (kernels: {m['torch_cpu_capability']})" if m.get("torch_cpu_capability") else ""
    s += " (VM)" if m.get("virtualised") else ""
    if m.get("memory_gib"):
        s += f", {m['memory_gib']:.0f} GiB"
    if m.get("gpu"):
        s += f"; {m['gpu']}"
    return s + f"; torch {m['torch']}, {m['threads']} threads"


def write_latest(path: Path, result: dict) -> None:
    write_json(path, result)


def _fmt(x, spec=".2f") -> str:
    return "—" if x is None else format(x, spec)


def _get(result: dict, workload: str, kind: str, key: str = "mfu"):
    return result["workloads"].get(workload, {}).get(kind, {}).get(key)


def _perf_on(result: dict, variant: str) -> str:
    """The perf switches turned on (not at their off value) in any workload of the variant."""
    from bench.variants import PERF_OFF

    on = sorted({k for w in result["workloads"].values() if w.get("variant", "as_given") == variant
                 for k, v in (w.get("perf") or {}).items() if v != PERF_OFF.get(k, False)})
    return ", ".join(on) if on else "perf off"


def row(result: dict, variant: str) -> str:
    """One RESULTS.md row for a variant ("as_given" keys are the plain workload names)."""
    sfx = "" if variant == "as_given" else f"@{variant}"
    g = lambda w, k, key="mfu": _get(result, w + sfx, k, key)  # noqa: E731
    fid = lambda w: result.get("fid", {}).get(w, {}).get("mfu")  # noqa: E731
    c = result["ceiling"]
    ts = g("cifar10_n8", "train_step", "seconds")
    n8 = result["workloads"].get("cifar10_n8" + sfx, {}).get("train_step", {})
    cells = [
        result["date"][:16].replace("T", " "),
        result["machine"]["text"] + (f" — {result['note']}" if result.get("note") else ""),
        f"{result['mode']}, {variant} ({_perf_on(result, variant)})",
        f"{_fmt(result['load_start'])} → {_fmt(result['load_end'])}",
        f"{c['start'] / 1e9:.0f} / {c['end'] / 1e9:.0f} / {c['best'] / 1e9:.0f}",
        " · ".join(_fmt(g(w, "train_step")) for w in ("cifar10_n2", "cifar10_n5", "cifar10_n8")),
        " · ".join(_fmt(g(w, "train_step")) for w in ("toy_mlp", "digits_wrn", "digits_mlp")),
        " · ".join(_fmt(g(w, "sample")) for w in ("cifar10_n8", "toy_mlp", "digits_wrn", "digits_mlp")),
        " · ".join([_fmt(g("digits_mlp", "hmc")), _fmt(g("toy_mlp", "ais")),
                    _fmt(fid("fid_inception")), _fmt(fid("fid_classifier"))]),
        "—" if ts is None else f"{ts:.2f} ({n8['B']}, {n8['K']})",
        "—" if g("cifar10_n2_b16", "train_step") is None else
        f"{g('cifar10_n2_b16', 'train_step'):.2f}, {g('cifar10_n2_b16', 'train_step', 'seconds'):.1f}",
        f"{result['wall_seconds']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def append_rows(path: Path, rows: list[str], title: str = "# Benchmark results") -> None:
    """Insert rows at the end of the table that follows ``MARKER`` (the file is created if missing)."""
    text = path.read_text() if path.exists() else f"{title}\n\n{MARKER}\n\n{HEADER}\n"
    lines = text.splitlines()
    if MARKER not in lines:
        lines += ["", MARKER, "", *HEADER.splitlines()]
    i = lines.index(MARKER) + 1
    while i < len(lines) and not lines[i].startswith("|"):
        i += 1
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    lines[i:i] = rows
    write_text(path, "\n".join(lines) + "\n")
