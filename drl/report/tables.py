"""Tables 1-3: each row either measured by this pipeline (read from a run's metrics JSON) or quoted
from the paper, with the paper's value beside ours, as CSV and as Markdown."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

MEASURED, QUOTED = "measured", "quoted from the paper"


def table_rows(table: dict, metrics_of_run) -> list[dict]:
    """One dict per row of ``table`` (a ``tables`` entry); ``metrics_of_run(run)`` returns that run's
    metrics dict (``select: long_run.<k>`` reads its chains of k steps per level instead).  Columns:
    section, label, source, run, extractor, then <metric>, <metric>_se (its standard error where the
    metrics give one: the bootstrap over samples for FID/IS, over AIS chains for log Z) and
    <metric>_paper.  A run whose training diverged shows "diverged" in its metric columns."""
    rows = []
    for row in table["rows"]:
        m = metrics_of_run(row["run"]) if "run" in row else {}
        diverged = bool(m.get("diverged"))
        if "select" in row:
            m = m["long_run"][row["select"].split(".")[1]]
        out = {"section": row.get("section", ""), "label": row["label"],
               "source": MEASURED if "run" in row else QUOTED, "run": row.get("run", ""),
               "extractor": m.get("extractor", "")}
        for col in table["columns"]:
            out[col] = "diverged" if diverged else m.get(col, "")
            out[f"{col}_se"] = "" if diverged or m.get(f"{col}_se") is None else m[f"{col}_se"]
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
    if not isinstance(value, float) or not isinstance(se, float) or se <= 0:
        return _fmt(value)
    places = max(0, 1 - int(math.floor(math.log10(se))))
    return f"{value:.{places}f} ± {se:.{places}f}"


def to_markdown(title: str, columns: list[str], rows: list[dict]) -> str:
    head = ["", "Model / setting"] + [f"{c} (ours)" for c in columns] + [f"{c} (paper)" for c in columns] + ["source"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        source = r["source"] + (f", {r['extractor']}" if r["extractor"] else "")
        cells = ([r["section"], r["label"]] + [_with_se(r[c], r.get(f"{c}_se", "")) for c in columns]
                 + [_fmt(r[f"{c}_paper"]) for c in columns])
        lines.append("| " + " | ".join(cells + [source]) + " |")
    note = ("", "± : standard error -- for FID and IS, the bootstrap over the samples (the spread a new sample set "
                "would show; retraining moves a run more, see the README), for log Z over the AIS chains.")
    return "\n".join(lines + (list(note) if any(r.get(f"{c}_se") != "" for r in rows for c in columns) else [])) + "\n"


def load_metrics(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
