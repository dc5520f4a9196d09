"""drl/report/tables.py: measured rows read the run's metrics, quoted rows keep the paper's values."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from drl.report.tables import MEASURED, QUOTED, table_rows, to_csv, to_markdown

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
