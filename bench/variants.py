"""The one place where the benchmark's performance variants are defined.

Every workload is measured with its run config as given (``as_given``: params.yaml's settings,
including the run's own ``perf`` section if it has one).  When the params schema
(``drl/schema/params.schema.yaml``) has a run-level ``perf`` section, each workload is also measured
as ``plain`` (every optimisation off) and ``optimised`` (every one on): ``PERF_OFF`` and ``PERF_ON``
below, restricted to the keys the schema defines and checked against it, so a renamed key or value
fails loudly here instead of being silently ignored by the library.  A variant whose effective
settings equal the run's as given (e.g. ``plain`` for a run without a ``perf`` section, the library's
defaults being all off) is not measured twice.
"""
from __future__ import annotations

import copy
from functools import lru_cache

import jsonschema
import yaml

from drl.config import SCHEMA_PATH

# Keys of the run-level ``perf`` section (issue 6).  Edit here when the library's switches change.
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


# How a sampling / evaluation model takes a run's perf settings: "module:function", called as
# function(ebm, perf, device) -> ebm (drl.train.train calls the same on its model), or None if the
# library has none; then only train_step (which reads cfg["perf"] inside drl.train.train) is
# measured for the plain and optimised variants.
SAMPLING_HOOK: str | None = "drl.perf:configure"


@lru_cache(maxsize=1)
def perf_schema() -> dict | None:
    """The ``perf`` subschema of a run, or None while the schema has none."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    return schema.get("$defs", {}).get("run", {}).get("properties", {}).get("perf")


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
    if schema is None:
        return out
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


def sampling_supported(cfg: dict) -> bool:
    """Whether a sampling model can be given this config's perf settings (always, without any)."""
    return "perf" not in cfg or SAMPLING_HOOK is not None


def prepare_for_sampling(ebm, cfg: dict, device: str):
    """The eval-mode EBM with the config's perf settings applied through ``SAMPLING_HOOK``."""
    if "perf" not in cfg or SAMPLING_HOOK is None:
        return ebm
    import importlib

    module, name = SAMPLING_HOOK.split(":")
    return getattr(importlib.import_module(module), name)(ebm, cfg["perf"], device)
