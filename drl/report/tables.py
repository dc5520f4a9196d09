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
    whose runs diverged shows "diverged" in its metric columns ("diverged (k of n seeds)" when some of
    its seeds did not).  A metric whose <metric>_lower_bound is also a column gets <metric>_refuted_seeds:
    in how many of the row's runs it lies below its own bound."""
    rows = []
    for row in table["rows"]:
        ms = [metrics_of_run(r) for r in seeds_of(row["run"])] if "run" in row else [{}]
        n_diverged = sum(m.get("diverged_iteration") is not None for m in ms)
        diverged = "diverged" if n_diverged == len(ms) else f"diverged ({n_diverged} of {len(ms)} seeds)"
        if "select" in row:
            ms = [m["long_run"][row["select"].split(".")[1]] for m in ms]
        out = {"section": row.get("section", ""), "label": row["label"],
               "source": MEASURED if "run" in row else QUOTED, "run": row.get("run", ""),
               "extractor": extractor_of(row["run"]) if "run" in row else "",
               "n_seeds": len(ms) if "run" in row else ""}
        for col in table["columns"]:
            values = [m.get(col) for m in ms]
            out[col] = out[f"{col}_se"] = out[f"{col}_sd_seeds"] = ""
            if n_diverged:
                out[col] = diverged
            elif len(ms) == 1:
                out[col] = "" if values[0] is None else values[0]
                out[f"{col}_se"] = "" if ms[0].get(f"{col}_se") is None else ms[0][f"{col}_se"]
            elif all(isinstance(v, (int, float)) for v in values):
                sd = statistics.stdev(values)
                out[col], out[f"{col}_sd_seeds"], out[f"{col}_se"] = statistics.fmean(values), sd, sd / math.sqrt(len(ms))
            paper = row.get("paper", {}).get(col)
            out[f"{col}_paper"] = "" if paper is None else paper
            if f"{col}_lower_bound" in table["columns"] and not n_diverged:   # per seed: a bound holds per run
                out[f"{col}_refuted_seeds"] = sum(isinstance(m.get(col), (int, float)) and
                                                  isinstance(m.get(f"{col}_lower_bound"), (int, float)) and
                                                  m[col] < m[f"{col}_lower_bound"] for m in ms)
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
    for c in columns:   # an estimate below its certified lower bound (drl/evaluate/log_z_bound.py) is refuted
        low = [f"{r['label']}" + (f" (in {r[f'{c}_refuted_seeds']} of {r['n_seeds']} seeds)" if r["n_seeds"] > 1 else "")
               for r in rows if r.get(f"{c}_refuted_seeds")]
        if low:
            notes.append(f"{c} of {', '.join(low)} lies below {c}_lower_bound, a bound that holds with probability "
                         "0.99 per run whatever the model: that estimate is refuted.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


# A paper claim holds here when the two rows differ by at least CLAIM_Z standard errors of their difference.
CLAIM_Z = 2.0


def claim_rows(claims: list[dict], rows: list[dict]) -> list[dict]:
    """Each claim of a table (``{claim, kind, rows: [A, B], metric}``) tested on its measured rows.

    ``lower``: A's metric is below B's.  ``similar``: no difference is resolved.  ``not_higher``: A's
    metric is not resolved above B's (e.g. longer chains keep the FID: no worse, better allowed).  The
    margin is (B - A) / sqrt(se_A^2 + se_B^2), the se of a row over several seeds being that of its
    mean (the spread retraining gives), of a single run its own.  ``lower`` holds at margin >= CLAIM_Z,
    is reversed at <= -CLAIM_Z and unresolved between; ``similar`` holds at |margin| < CLAIM_Z;
    ``not_higher`` at margin > -CLAIM_Z.  A row that diverged counts as the worse one: it is what the
    paper calls an unstable setting."""
    by_label = {r["label"]: r for r in rows}
    out = []
    for c in claims:
        a, b, m = by_label[c["rows"][0]], by_label[c["rows"][1]], c.get("metric", "fid")
        va, vb = a[m], b[m]
        margin, verdict = "", ""
        a_diverged, b_diverged = (str(v).startswith("diverged") for v in (va, vb))
        if a_diverged or b_diverged:
            lower_holds = b_diverged and not a_diverged
            verdict = "holds" if lower_holds and c["kind"] in ("lower", "not_higher") else "does not hold"
            margin = f"{'B' if b_diverged else 'A'} diverged"
        elif all(isinstance(v, (int, float)) for v in (va, vb, a[f"{m}_se"], b[f"{m}_se"])):
            margin = (vb - va) / math.hypot(a[f"{m}_se"], b[f"{m}_se"])
            if c["kind"] == "lower":
                verdict = "holds" if margin >= CLAIM_Z else "reversed" if margin <= -CLAIM_Z else "not resolved"
            elif c["kind"] == "not_higher":
                verdict = "holds" if margin > -CLAIM_Z else "does not hold"
            else:
                verdict = "holds" if abs(margin) < CLAIM_Z else "does not hold"
        out.append({"claim": c["claim"], "kind": c["kind"], "metric": m, "row_a": a["label"], "row_b": b["label"],
                    "a": va, "b": vb, "a_paper": a.get(f"{m}_paper", ""), "b_paper": b.get(f"{m}_paper", ""),
                    "margin_se": margin, "verdict": verdict})
    return out


def claims_markdown(claims: list[dict]) -> str:
    head = ["Paper's claim", "A", "B", "metric", "A (ours)", "B (ours)", "A, B (paper)", "(B - A) / se", "here"]
    lines = ["### The paper's claims at this scale", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in claims:
        cells = [c["claim"], c["row_a"], c["row_b"], c["metric"], _fmt(c["a"]), _fmt(c["b"]),
                 f"{_fmt(c['a_paper'])}, {_fmt(c['b_paper'])}",
                 f"{c['margin_se']:.1f}" if isinstance(c["margin_se"], float) else _fmt(c["margin_se"]), c["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "se: of each row's mean over its seeds (of a one-run row, its own). "
                                   f"\"lower\" holds at a margin of at least {CLAIM_Z:g}, is reversed at -{CLAIM_Z:g} "
                                   "or below, and is not resolved between; "
                                   f"\"similar\" holds when |margin| < {CLAIM_Z:g}; \"not higher\" when the margin is "
                                   f"above -{CLAIM_Z:g}. A diverged row counts as the worse. "
                                   "With 3 seeds per row these are rough tests (a t distribution with 2 degrees of "
                                   "freedom would ask for 4.3)."]) + "\n"


def load_metrics(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
