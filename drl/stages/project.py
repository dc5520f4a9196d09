"""Workflow tools: check params.yaml, generate the DVC pipeline files, pull a group's artifacts."""
from __future__ import annotations

from pathlib import Path

from drl.io import write_text


def validate(params: dict, args) -> None:
    print(f"{args.params}: OK ({len(params['datasets'])} datasets, {len(params['runs'])} runs)")


def dvc_yaml(params: dict, args) -> None:
    from drl.workflow import dvc_files

    files = dvc_files(params)
    stale = [p for p, text in files.items() if not Path(p).exists() or Path(p).read_text() != text]
    if args.check:
        if stale:
            raise SystemExit(f"{', '.join(stale)} out of date with {args.params}; run `drl dvc-yaml` to regenerate")
        print(f"{', '.join(files)} up to date")
        return
    for path in stale:
        write_text(path, files[path])
        print(f"wrote {path}")


def pull(params: dict, args) -> None:
    from drl.share import pull as pull_group

    pull_group(params, args.group, args.remote)
