"""`drl compare`: is the change between two metrics files beyond the metrics' own spread?

For every number present in both files whose standard error both give (``<metric>_se``: over
sample sets for FID/IS, AIS chains for log Z, test examples and log Z for bits/dim), the
change d = new - old is set against the standard error of a difference of independent estimates,
se_d = sqrt(se_old^2 + se_new^2): |d| > z se_d (z = 2 by default, about a 95 % two-sided test) is
"beyond spread".  Numbers without a standard error are listed as such, never judged.  The
provenance files beside the metrics (``results/<group>/provenance/<run>.json``) say whether the
measuring instrument (the extractor's sha256) or the machine changed: with another instrument the
FID/IS are not comparable at all, and the comparison says so first.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

AUXILIARY = ("_se", "_ci_low", "_ci_high")


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves as {"a.b": value} (booleans and strings dropped)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _reported(key: str) -> bool:
    return not (key.endswith(AUXILIARY) or key.rsplit(".", 1)[-1].startswith("n_")
                or key.endswith(("iterations", "iteration")))


def compare(old: dict, new: dict, z: float = 2.0) -> list[dict]:
    """One row per metric: name, old, new, diff, se_diff (None without both se), z (diff / se_diff)
    and verdict ("beyond spread", "within spread", "no spread given"; "only in the old file" / "only in
    the new file" for a number the other lacks, e.g. a run that diverged and has null metrics)."""
    a, b = flatten(old), flatten(new)
    rows = []
    for key in sorted(k for k in a.keys() ^ b.keys() if _reported(k)):
        rows.append({"metric": key, "old": a.get(key), "new": b.get(key), "diff": None, "se_diff": None, "z": None,
                     "verdict": "only in the old file" if key in a else "only in the new file"})
    for key in sorted(k for k in a.keys() & b.keys() if _reported(k)):
        d = b[key] - a[key]
        se_a, se_b = a.get(f"{key}_se"), b.get(f"{key}_se")
        se = math.hypot(se_a, se_b) if se_a is not None and se_b is not None else None
        score = d / se if se else None
        verdict = ("no spread given" if se is None else
                   "beyond spread" if abs(d) > z * se else "within spread")
        rows.append({"metric": key, "old": a[key], "new": b[key], "diff": d, "se_diff": se, "z": score,
                     "verdict": verdict})
    return rows


def provenance_notes(old: dict | None, new: dict | None) -> list[str]:
    """What differs between two provenance records: the extractor file (fatal for FID/IS), the machines."""
    if not old or not new:
        return ["no provenance beside one of the files: instrument and machine unknown"]
    notes = []
    ea, eb = (old.get("extractor") or {}).get("sha256"), (new.get("extractor") or {}).get("sha256")
    if ea != eb:
        notes.append(f"INSTRUMENT CHANGED: extractor sha256 {ea} -> {eb}; FID/IS are not comparable")
    for role in ("trained_on", "evaluated_on"):
        ma, mb = old.get(role) or {}, new.get(role) or {}
        diff = {k: (ma.get(k), mb.get(k)) for k in ("cpu", "torch_cpu_capability", "threads", "torch", "device")
                if ma.get(k) != mb.get(k)}
        if diff:
            notes.append(f"{role.replace('_', ' ')} another machine: " +
                         ", ".join(f"{k} {x} -> {y}" for k, (x, y) in diff.items()))
    return notes


def provenance_path(metrics_path: str | Path) -> Path:
    """results/<group>/metrics/<run>.json -> results/<group>/provenance/<run>.json"""
    p = Path(metrics_path)
    return p.parent.parent / "provenance" / p.name


def divergence_notes(old: dict, new: dict) -> list[str]:
    """A run whose training diverged has null metrics: say so instead of comparing nothing."""
    return [f"{which} run DIVERGED at iteration {m['diverged_iteration']}: its metrics are null"
            for which, m in (("the old", old), ("the new", new)) if m.get("diverged_iteration") is not None]


def render(rows: list[dict], notes: list[str], z: float) -> str:
    def num(v):
        return "-" if v is None else f"{v:.4g}"

    lines = [f"note: {n}" for n in notes]
    lines += [f"{'metric':<32} {'old':>10} {'new':>10} {'diff':>10} {'se(diff)':>9} {'z':>7}  verdict (|z| > {z:g})"]
    lines += [f"{r['metric']:<32} {num(r['old']):>10} {num(r['new']):>10} {num(r['diff']):>10} {num(r['se_diff']):>9} "
              f"{num(r['z']):>7}  {r['verdict']}" for r in rows]
    return "\n".join(lines)


def load(text: str | None) -> dict | None:
    return None if text is None else json.loads(text)
