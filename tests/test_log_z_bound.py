"""drl/evaluate/log_z_bound.py: the certified lower bound on log Z_0 (wide-Gaussian importance
sampling with Markov's inequality), against closed forms and 2-D quadrature; and the tables' note
that refutes an estimate lying below it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from drl.evaluate.log_z_bound import RADII, log_q, log_z_lower_bound
from drl.report.tables import table_rows, to_markdown
from test_partition import _random_2d

LOG_DELTA = math.log(0.01)


class LevelZero(nn.Module):
    """A level-0 energy f(y, t) given as a function of y alone (the bound only evaluates t = 0)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, y, t):
        return self.f(y.double().flatten(1)).float()


def _gaussian_log_density(y, mean, sd):
    d = y.shape[1]
    return -((y - mean) ** 2).sum(1) / (2 * sd ** 2) - d * math.log(sd) - 0.5 * d * math.log(2 * math.pi)


def test_log_q_is_the_equal_gaussian_mixture():
    """log q at a few points against scipy's normal densities, mixed by hand in float64."""
    from scipy.stats import multivariate_normal

    y = torch.tensor([[0.3, -1.0, 2.0], [40.0, 0.0, -7.0]], dtype=torch.float64)
    radii = (0.5, 3.0, 100.0)
    want = [np.log(np.mean([multivariate_normal(np.zeros(3), r ** 2 * np.eye(3)).pdf(p) for r in radii]))
            for p in y.numpy()]
    np.testing.assert_allclose(log_q(y, radii).numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("dim", [2, 64])
def test_unit_gaussian_bound_sits_log_delta_below_the_closed_form(dim):
    """f = log N(y; 0, I) + 5 (log Z_0 = 5 exactly): the r = 1 component matches f, so Z^ ~= Z_0
    and the bound is log Z_0 + log 0.01 to within the estimate's own error (< 0.3 nats here)."""
    ebm = LevelZero(lambda y: _gaussian_log_density(y, 0.0, 1.0) + 5.0)
    for seed in range(3):
        r = log_z_lower_bound(ebm, (dim,), generator=torch.Generator().manual_seed(seed))
        assert r["log_z_lower_bound"] == pytest.approx(5.0 + LOG_DELTA, abs=0.3), r
        assert r["log_z_lower_bound"] < 5.0 and r["n"] == len(RADII) * 1000


def test_2d_level_bound_lies_below_quadrature_and_is_tight():
    """A trained-like 2-D level 0 (quadrature log Z_0): below the truth, within log 0.01 - 1 of it."""
    ebm, levels = _random_2d("toy", "marginal")
    truth = levels[0].log_z
    for seed in range(5):
        b = log_z_lower_bound(ebm, (2,), generator=torch.Generator().manual_seed(seed))["log_z_lower_bound"]
        assert truth + LOG_DELTA - 1.0 < b < truth, (b, truth)


def test_mass_far_from_the_data_is_found():
    """f = log( N(y; 0, I) + e^50 N(y; (1000, 0), 100^2 I) ): log Z_0 = log(1 + e^50) ~= 50.  Chains
    near the data (an importance estimate from N(0, I), as progressive samples see it) give ~0; the
    bound gives at least 50 + log 0.01 - 1, and never more than the truth."""
    far = torch.tensor([1000.0, 0.0], dtype=torch.float64)
    ebm = LevelZero(lambda y: torch.logaddexp(_gaussian_log_density(y, 0.0, 1.0),
                                              50.0 + _gaussian_log_density(y, far, 100.0)))
    truth = float(np.logaddexp(0.0, 50.0))
    near = torch.randn(10_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    near_estimate = float(torch.logsumexp(ebm(near, None).double() - _gaussian_log_density(near, 0.0, 1.0), 0)
                          - math.log(len(near)))
    assert abs(near_estimate) < 0.1
    for seed in range(3):
        b = log_z_lower_bound(ebm, (2,), generator=torch.Generator().manual_seed(seed))["log_z_lower_bound"]
        assert truth + LOG_DELTA - 1.0 < b < truth, (b, truth)


def test_bound_rejects_a_bad_delta():
    with pytest.raises(ValueError, match="delta"):
        log_z_lower_bound(LevelZero(lambda y: -y.pow(2).sum(1)), (2,), delta=1.0)


def test_table_marks_an_estimate_below_its_bound_as_refuted():
    table = {"columns": ["test_bpd", "test_bpd_lower_bound"], "rows": [{"label": "Ours (T1k)", "run": "r"}]}
    below = to_markdown("T", table["columns"], table_rows(table, lambda r: {"test_bpd": 7.3, "test_bpd_lower_bound": 9e5}))
    above = to_markdown("T", table["columns"], table_rows(table, lambda r: {"test_bpd": 7.3, "test_bpd_lower_bound": 5.0}))
    assert "test_bpd of Ours (T1k) lies below test_bpd_lower_bound" in below and "refuted" in below
    assert "refuted" not in above


def test_a_seeded_row_counts_the_seeds_whose_estimate_lies_below_their_own_bound():
    """The bound holds per run, so each seed is judged against its own: one seed's huge bound must not
    refute the others through the mean (here the mean bound, 3.3e5, exceeds every estimate)."""
    table = {"columns": ["test_bpd", "test_bpd_lower_bound"], "rows": [{"label": "T1k", "run": "r"}]}
    runs = {"r0": {"test_bpd": 7.3, "test_bpd_lower_bound": 1e6}, "r1": {"test_bpd": 7.2, "test_bpd_lower_bound": 5.0},
            "r2": {"test_bpd": 7.4, "test_bpd_lower_bound": 6.0}}
    rows = table_rows(table, runs.__getitem__, seeds_of=lambda run: list(runs))
    assert rows[0]["test_bpd_refuted_seeds"] == 1
    assert "test_bpd of T1k (in 1 of 3 seeds) lies below test_bpd_lower_bound" in to_markdown("T", table["columns"], rows)
    runs["r0"]["test_bpd_lower_bound"] = 7.0
    rows = table_rows(table, runs.__getitem__, seeds_of=lambda run: list(runs))
    assert rows[0]["test_bpd_refuted_seeds"] == 0 and "refuted" not in to_markdown("T", table["columns"], rows)
