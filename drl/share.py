"""`drl pull --group G`: a group's trained models, samples and prepared data from the team's DVC
remote, such that neither engine wants to recompute them.

DVC decides whether the pulled files are current: dvc.lock holds the hash of every stage's inputs,
params, code and outputs, and ``dvc status`` compares them.  Snakemake cannot: it compares
modification times, and a fresh clone gets the committed metrics from git before the models they
were computed from arrive from the remote, so every evaluation looks stale.  Once DVC has found the
group up to date, ``snakemake --touch`` records that in Snakemake's terms (outputs touched in DAG
order).  When DVC finds a stage changed, nothing is touched and the changed stages are listed."""
from __future__ import annotations

import subprocess

from drl.data.points import DataError
from drl.workflow import stages

SNAKEMAKE_TARGET_ALL = "all"


def group_stages(params: dict, group: str | None) -> list[str]:
    names = [s.name for s in stages(params) if s.group and group in (None, s.group)]
    if not names:
        raise DataError(f"no stage belongs to group {group!r}; groups are named by runs.<run>.group in params.yaml")
    return names


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, text=True, capture_output=True)


def pull(params: dict, group: str | None, remote: str | None = None) -> None:
    names = group_stages(params, group)
    p = _run(["dvc", "pull", "--with-deps", *(["--remote", remote] if remote else []), *names])
    if p.returncode != 0:
        raise DataError(f"dvc pull failed:\n{p.stdout[-3000:]}{p.stderr[-3000:]}\nFix: check the remote "
                        "(`dvc remote list`); a teammate may not have pushed this group (`dvc push` after a run)")
    p = _run(["dvc", "status", "--with-deps", *names])
    if p.returncode != 0 or "up to date" not in p.stdout:
        raise DataError(f"the pulled artifacts are not current for this checkout (params, code or inputs "
                        f"changed since they were pushed), so Snakemake's timestamps were left alone:\n{p.stdout}"
                        "Fix: rerun the changed stages (`dvc repro` or `snakemake`), or check out the commit "
                        "they were pushed from")
    p = _run(["snakemake", "--cores", "1", "--touch", group or SNAKEMAKE_TARGET_ALL])
    if p.returncode != 0:
        raise DataError(f"snakemake --touch failed:\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    print(f"pulled {len(names)} stages of {group or 'every group'}; DVC and Snakemake both find them up to date")
