"""Tables 1-3: each row either measured by this pipeline (read from a run's metrics JSON) or quoted
from the paper, with the paper's value beside ours, as CSV and as Markdown."""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

MEASURED, QUOTED = "measured", "quoted from the paper"


def table_rows(table: dict, metrics_of_run, seeds_of=lambda run: [run], extractor_of=lambda run: "") -> list[dict]:
    """One dict per row of ``table`` (a ``tables`` entry); ``metrics_of_run(run)`` returns that run's
    metrics dict (``select: long_run.<k>`` reads its chains of k steps per level instead),
    ``seeds_of(run)`` the runs that train its configuration, one per training seed, and
    ``extractor_of(run)`` the name of the extractor its FID/IS use ("" for none).

    Columns: section, label, source, run, extractor, n_seeds, then per metric <metric>, <metric>_se,
    <metric>_sd_seeds and <metric>_paper.  One seed: the run's value and its own standard error (over
    sample sets for FID/IS, AIS chains for log Z).  Several: the mean over seeds, the
    standard deviation over seeds, and the standard error of that mean (sd / sqrt(n)).  A row any of
    whose runs diverged shows "diverged" in its metric columns."""
    rows = []
    for row in table["rows"]:
        ms = [metrics_of_run(r) for r in seeds_of(row["run"])] if "run" in row else [{}]
        diverged = any(m.get("diverged_iteration") is not None for m in ms)
        if "select" in row:
            ms = [m["long_run"][row["select"].split(".")[1]] for m in ms]
        out = {"section": row.get("section", ""), "label": row["label"],
               "source": MEASURED if "run" in row else QUOTED, "run": row.get("run", ""),
               "extractor": extractor_of(row["run"]) if "run" in row else "",
               "n_seeds": len(ms) if "run" in row else ""}
        for col in table["columns"]:
            values = [m.get(col) for m in ms]
            out[col] = out[f"{col}_se"] = out[f"{col}_sd_seeds"] = ""
            if diverged:
                out[col] = "diverged"
            elif len(ms) == 1:
                out[col] = "" if values[0] is None else values[0]
                out[f"{col}_se"] = "" if ms[0].get(f"{col}_se") is None else ms[0][f"{col}_se"]
            elif all(isinstance(v, (int, float)) for v in values):
                sd = statistics.stdev(values)
                out[col], out[f"{col}_sd_seeds"], out[f"{col}_se"] = statistics.fmean(values), sd, sd / math.sqrt(len(ms))
            paper = row.get("paper", {}).get(col)
            out[f"{col}_paper"] = "" if paper is None else paper
        rows.append(out)
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v) if v != "" else "-"


def _with_se(value, se) -> str:
    """"value ± se" (se to 2 significant digits, the value to the same decimal place), or the value alone."""
    if not isinstance(value, float) or not isinstance(se, float) or not math.isfinite(se) or se <= 0:
        return _fmt(value)
    places = max(0, 1 - int(math.floor(math.log10(se))))
    return f"{value:.{places}f} ± {se:.{places}f}"


def to_markdown(title: str, columns: list[str], rows: list[dict]) -> str:
    head = ["", "Model / setting"] + [f"{c} (ours)" for c in columns] + [f"{c} (paper)" for c in columns] + ["source"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seeded = any(isinstance(r.get("n_seeds"), int) and r["n_seeds"] > 1 for r in rows)
    for r in rows:
        source = r["source"] + (f", {r['extractor']}" if r["extractor"] else "")
        if seeded and r.get("n_seeds"):
            source += f", {r['n_seeds']} seed{'s' if r['n_seeds'] > 1 else ''}"
        cells = ([r["section"], r["label"]]
                 + [_with_se(r[c], r[f"{c}_sd_seeds"] if r.get(f"{c}_sd_seeds", "") != "" else r.get(f"{c}_se", ""))
                    for c in columns]
                 + [_fmt(r[f"{c}_paper"]) for c in columns])
        lines.append("| " + " | ".join(cells + [source]) + " |")
    notes = []
    if seeded:
        notes.append("Rows over several seeds: mean ± standard deviation over the training seeds (the spread "
                     "retraining gives); the CSV also has the standard error of the mean.")
    if any(r.get(f"{c}_se") != "" and r.get(f"{c}_sd_seeds", "") == "" for r in rows for c in columns):
        notes.append("Rows of one run: ± its standard error -- for FID and IS over sample sets, by half-sampling "
                     "(the spread another sample set of the same model would show; retraining moves a run more), for "
                     "log Z over the AIS chains, for bits/dim over the test set and log Z.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def load_metrics(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
