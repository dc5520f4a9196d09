"""The one place where the benchmark's performance variants are defined.

Every workload is measured with its run config as given (``as_given``: params.yaml's settings,
including the run's own ``perf`` section if it has one), and also as ``plain`` (every optimisation off) and ``optimised`` (every one on): ``PERF_OFF`` and ``PERF_ON``
below, restricted to the keys the schema defines and checked against it, so a renamed key or value
fails loudly here instead of being silently ignored by the library.  A variant whose effective
settings equal the run's as given (e.g. ``plain`` for a run without a ``perf`` section, the library's
defaults being all off) is not measured twice.
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from functools import lru_cache

import jsonschema
import yaml

from drl.config import SCHEMA_PATH

# Keys of the run-level ``perf`` section.  Edit here when the library's switches change.
PERF_OFF = {"sn_power_iteration": "per_call", "channels_last": False, "compile": False, "cuda_graphs": False}
PERF_ON = {"sn_power_iteration": "per_iteration", "channels_last": True, "compile": True, "cuda_graphs": True}
# Switched on only when measuring on a CUDA device: CUDA graphs need CUDA.  torch.compile is on in the
# CPU "optimised" variant too: on the 2-core machine it cut the toy MLP's training iteration from 72 to
# 47 ms and the digits WRN's from 0.186 to 0.171 s (after 3-4 s of compilation in the first iteration).
CUDA_ONLY = {"cuda_graphs"}
# Switches that change the function computed (drl/perf.py): a float64 reference of an optimised
# path runs with these and no others (bench/gpu_check.py).
FUNCTION_CHANGING = {"sn_power_iteration"}
# Switches whose effect is speed alone, never the arithmetic: off while FLOPs are counted (eager
# mode), since FlopCounterMode cannot see inside compiled graphs or replayed CUDA graphs.
EXECUTION_ONLY = {"compile": False, "cuda_graphs": False}


@lru_cache(maxsize=1)
def perf_schema() -> dict:
    """The ``perf`` subschema of a run (``drl/schema/params.schema.yaml``)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())["$defs"]["run"]["properties"]["perf"]


def _effective(perf: dict, cuda: bool) -> dict:
    """Settings as the library would run them: its defaults (all off, = PERF_OFF) overridden by
    ``perf``, the CUDA-only switches off on other devices."""
    out = {**PERF_OFF, **perf}
    return out if cuda else {**out, **{k: False for k in CUDA_ONLY}}


def variants(device: str, cfg: dict | None = None) -> dict[str, dict | None]:
    """{variant name: perf settings to merge into the run config (None: the config as given)}; with
    ``cfg``, variants that would run exactly as the config as given are left out."""
    schema = perf_schema()
    out: dict[str, dict | None] = {"as_given": None}
    known = set(schema.get("properties", {}))
    cuda = device.startswith("cuda")
    for name, perf in (("plain", PERF_OFF), ("optimised", PERF_ON)):
        chosen = {k: v for k, v in perf.items() if k in known}
        if not cuda:
            chosen.update({k: False for k in CUDA_ONLY if k in chosen})
        try:
            jsonschema.validate(chosen, schema)
        except jsonschema.ValidationError as exc:
            raise ValueError(f"bench/variants.py: the {name!r} perf settings {chosen} do not fit the params "
                             f"schema's perf section: {exc.message}; update PERF_OFF / PERF_ON") from exc
        if cfg is not None and _effective({**cfg.get("perf", {}), **chosen}, cuda) == _effective(cfg.get("perf", {}), cuda):
            continue
        out[name] = chosen
    return out


def apply(cfg: dict, perf: dict | None) -> dict:
    """A copy of the run config with ``perf`` merged into its ``perf`` section (None: unchanged)."""
    cfg = copy.deepcopy(cfg)
    if perf is not None:
        cfg["perf"] = {**cfg.get("perf", {}), **perf}
    return cfg


def for_counting(cfg: dict) -> dict:
    """The config with the execution-only switches off (same arithmetic, eager mode) for FlopCounterMode."""
    if "perf" not in cfg:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg["perf"].update({k: v for k, v in EXECUTION_ONLY.items() if k in cfg["perf"]})
    return cfg


@contextmanager
def counting(ebm):
    """Within: ``ebm`` with the execution-only switches off (eager, the same arithmetic), for
    FlopCounterMode, which sees neither inside compiled graphs nor replayed CUDA graphs."""
    old = ebm.perf
    ebm.perf = dataclasses.replace(old, **EXECUTION_ONLY)
    try:
        yield ebm
    finally:
        ebm.perf = old
