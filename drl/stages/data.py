"""Stages ``prepare`` and ``fetch``, and the explanation of a raw input no stage makes."""
from __future__ import annotations

import os
from pathlib import Path

from drl import paths
from drl.config import ParamsError
from drl.data.points import DataError


def prepare(params: dict, args) -> None:
    from drl.data.prepare import prepare as prepare_dataset

    if args.dataset not in params["datasets"]:
        raise ParamsError(f"dataset {args.dataset!r} is not defined under datasets in {args.params}")
    m = prepare_dataset(params["datasets"][args.dataset], paths.prepared_dir(args.dataset), workers=args.workers or cpus())
    classes = f", {len(m['classes'])} classes" if m.get("classes") else ""
    print(f"prepared {args.dataset}: train {m['train']['shape']}, test {m['test']['shape']}{classes}")


def cpus() -> int:
    """The CPUs this process may run on (a SLURM allocation or taskset limits them), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def fetch(params: dict, args) -> None:
    from drl.data.fetch import fetch as download

    if args.name not in params.get("downloads", {}):
        raise ParamsError(f"{args.name!r} is not defined under downloads in {args.params} "
                          f"(defined: {sorted(params.get('downloads', {}))})")
    print(download(args.name, params["downloads"][args.name], retries=args.retries), flush=True)


def missing_input(params: dict, args) -> None:
    """Explain a raw dataset file or weights file that the workflow needs but cannot make."""
    from drl.data.prepare import LOADERS, raw_inputs

    for name, ds in params["datasets"].items():
        if args.path in raw_inputs(ds) and not Path(args.path).exists():
            LOADERS[ds["source"]](ds)  # raises DataError naming the file, its format and where to get it
    for name, ex in params.get("extractors", {}).items():
        if ex.get("weights") == args.path:
            from drl.evaluate.fidelity import resolve_extractor

            resolve_extractor(ex, f"extractors.{name}")  # raises EvaluationError saying how to obtain it
    raise DataError(f"{args.path}: not found; params.yaml names it as an input that you provide")
