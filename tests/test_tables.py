"""drl/report/tables.py: measured rows read the run's metrics, quoted rows keep the paper's values."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from drl.report.tables import CLAIM_Z, MEASURED, QUOTED, table_rows, to_csv, to_markdown

TABLE = {"title": "T", "columns": ["fid", "is_mean"],
         "rows": [{"section": "GAN", "label": "SNGAN", "paper": {"fid": 21.7, "is_mean": 8.22}},
                  {"label": "Ours", "run": "r1", "paper": {"fid": 9.6, "is_mean": None}}]}


def test_rows_put_ours_beside_the_paper_and_say_where_each_number_comes_from():
    rows = table_rows(TABLE, lambda run: {"fid": 12.5, "is_mean": 7.0}, extractor_of=lambda run: "inception")
    assert rows[0]["source"] == QUOTED and rows[0]["fid"] == "" and rows[0]["fid_paper"] == 21.7
    assert rows[1]["source"] == MEASURED and rows[1]["fid"] == 12.5 and rows[1]["fid_paper"] == 9.6
    assert rows[1]["is_mean_paper"] == "" and rows[1]["extractor"] == "inception"
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [r["label"] for r in parsed] == ["SNGAN", "Ours"] and parsed[1]["fid"] == "12.5"
    md = to_markdown("T", TABLE["columns"], rows)
    assert "| GAN | SNGAN | - | - | 21.7 | 8.22 | quoted from the paper |" in md
    assert "| Ours | 12.5 | 7 | 9.6 | - | measured, inception |" in md


def test_only_rows_with_a_run_read_metrics():
    seen = []
    table_rows(TABLE, lambda run: seen.append(run) or {})
    assert seen == ["r1"]


def numbers_only(metrics) -> bool:
    """Whether a metrics JSON holds numbers (null: none) and dicts of them only, as DVC shows them."""
    if isinstance(metrics, dict):
        return all(numbers_only(v) for v in metrics.values())
    return metrics is None or isinstance(metrics, (int, float)) and not isinstance(metrics, bool)


def test_committed_metrics_hold_numbers_only():
    """Every committed metrics file (each evaluate section: quadrature, fidelity, long-run chains,
    partition by both methods) holds numbers only; descriptions are in the provenance file."""
    files = sorted((Path(__file__).resolve().parents[1] / "results").glob("*/metrics/*.json"))
    assert files and not [f.name for f in files if not numbers_only(json.loads(f.read_text()))]
    assert not numbers_only({"fid": 1.0, "long_run": {"1": {"extractor": "x"}}}) and not numbers_only({"c": [1]})


def test_image_grid_layout():
    import numpy as np

    from drl.report.figures import _grid

    imgs = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1) * 40
    g = _grid(imgs, 6, cols=3)
    assert g.shape == (2 * 2 + 1, 3 * 2 + 1, 1)
    assert [g[1 + 2 * r, 1 + 2 * q, 0] for r in range(2) for q in range(3)] == list(imgs.ravel())
    assert _grid(imgs, 4).shape == (5, 5, 1)  # square by default: 2 x 2


def _seeded(values: dict) -> list[dict]:
    """Table rows from {label: [fid of each seed]} (3 seeds each)."""
    table = {"columns": ["fid"], "rows": [{"label": k, "run": k} for k in values]}
    return table_rows(table, lambda seed_run: {"fid": seed_run[1]}, seeds_of=lambda run: [(run, v) for v in values[run]])


def test_claims_hold_reverse_or_stay_unresolved_by_their_margin_in_standard_errors():
    from drl.report.tables import claim_rows, claims_markdown

    rows = _seeded({"A": [10.0, 11.0, 12.0], "B": [20.0, 21.0, 22.0], "C": [10.5, 13.0, 9.0]})
    claims = claim_rows([{"claim": "A beats B", "kind": "lower", "rows": ["A", "B"]},
                         {"claim": "B beats A", "kind": "lower", "rows": ["B", "A"]},
                         {"claim": "A beats C", "kind": "lower", "rows": ["A", "C"]},
                         {"claim": "A like C", "kind": "similar", "rows": ["A", "C"]},
                         {"claim": "A like B", "kind": "similar", "rows": ["A", "B"]}], rows)
    se = (1 / 3 ** 0.5) * 2 ** 0.5   # each mean's se is sd / sqrt(3) = 1 / sqrt(3); the difference's, sqrt(2) of it
    assert claims[0]["margin_se"] == pytest.approx(10.0 / se) and claims[0]["verdict"] == "holds"
    assert claims[1]["margin_se"] == pytest.approx(-10.0 / se) and claims[1]["verdict"] == "reversed"
    assert claims[2]["verdict"] == "not resolved" and abs(claims[2]["margin_se"]) < CLAIM_Z
    assert [c["verdict"] for c in claims[3:]] == ["holds", "does not hold"]
    md = claims_markdown(claims)
    assert "| A beats B | A | B | fid | 11 | 21 | -, - | 12.2 | holds |" in md
    # not_higher: A no worse than B (lower is better), however much better: holds for A vs B and A vs C,
    # not for B vs A (12 standard errors above)
    kept = claim_rows([{"claim": c, "kind": "not_higher", "rows": r} for c, r in
                       (("A kept", ["A", "B"]), ("A kept vs C", ["A", "C"]), ("B kept", ["B", "A"]))], rows)
    assert [c["verdict"] for c in kept] == ["holds", "holds", "does not hold"]


def test_a_diverged_row_loses_its_claims():
    from drl.report.tables import claim_rows

    table = {"columns": ["fid"], "rows": [{"label": "K30", "run": "a"}, {"label": "K10", "run": "b"}]}
    rows = table_rows(table, {"a": {"fid": 50.0, "fid_se": 3.0}, "b": {"fid": None, "diverged_iteration": 70}}.__getitem__)
    lower, similar = claim_rows([{"claim": "K10 unstable", "kind": "lower", "rows": ["K30", "K10"]},
                                 {"claim": "same", "kind": "similar", "rows": ["K30", "K10"]}], rows)
    assert (lower["verdict"], lower["margin_se"]) == ("holds", "B diverged") and similar["verdict"] == "does not hold"
    kept, lost = claim_rows([{"claim": "K30 no worse", "kind": "not_higher", "rows": ["K30", "K10"]},
                             {"claim": "K10 no worse", "kind": "not_higher", "rows": ["K10", "K30"]}], rows)
    assert (kept["verdict"], lost["verdict"]) == ("holds", "does not hold")
    reverse = claim_rows([{"claim": "K10 beats K30", "kind": "lower", "rows": ["K10", "K30"]}], rows)[0]
    assert reverse["verdict"] == "does not hold"
    some = table_rows(table, lambda seed_run: {"fid": None, "diverged_iteration": 9} if seed_run == "b1" else {"fid": 5.0},
                      seeds_of=lambda run: [run + "0", run + "1"])   # one of row K10's two seeds diverged
    assert some[1]["fid"] == "diverged (1 of 2 seeds)" and some[0]["fid"] == 5.0
    assert claim_rows([{"claim": "K10 unstable", "kind": "lower", "rows": ["K30", "K10"]}], some)[0]["verdict"] == "holds"


def test_seeds_figure_draws_every_seed_and_marks_a_diverged_one(tmp_path):
    from drl.io import savefig
    from drl.report.figures import seeds_figure

    fig = seeds_figure([("a", [10.0, 12.0, 11.0], [5.0, 5.0, 5.0]), ("b", [30.0, None, 28.0], [5.0, None, 5.0])])
    dots = [c for c in fig.axes[0].collections if len(c.get_offsets()) == 3]
    assert len(dots) == 2 and dots[1].get_offsets()[1][1] > 30.0   # the diverged seed sits above every value
    savefig(tmp_path / "seeds.png", fig)
    assert (tmp_path / "seeds.png").stat().st_size > 0
