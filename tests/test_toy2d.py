"""drl/data/toy2d.py: the closed-form toy densities are normalised and match their samplers."""
from __future__ import annotations

import numpy as np
import pytest

from drl.data.toy2d import TOYS, get_toy
from drl.evaluate.quadrature import grid

EXTENT = 4.0
N_FINE = 400          # fine midpoint grid: cell side 0.02
N_BINS = 20           # histogram bins per axis: side 0.4 = 20 fine cells
N_SAMPLES = 200_000

WITH_DENSITY = ["checkerboard", "eight_gaussians", "grid_gaussians", "rings"]


_LOGP_CACHE: dict[str, np.ndarray] = {}


@pytest.fixture(scope="module")
def fine_grid():
    return grid(EXTENT, N_FINE)


def _logp_on_grid(name: str, pts: np.ndarray) -> np.ndarray:
    if name not in _LOGP_CACHE:
        _LOGP_CACHE[name] = TOYS[name].log_density(pts)
    return _LOGP_CACHE[name]


def test_toy_list_is_as_documented():
    assert set(TOYS) == set(WITH_DENSITY) | {"two_spirals"}
    for name, toy in TOYS.items():
        assert toy.name == name
        assert get_toy(name) is toy


@pytest.mark.parametrize("name", WITH_DENSITY)
def test_density_integrates_to_one(name, fine_grid):
    pts, cell = fine_grid
    logp = _logp_on_grid(name, pts)
    assert logp.shape == (len(pts),)
    assert not np.any(np.isnan(logp))
    mass = np.exp(logp).sum() * cell
    assert mass == pytest.approx(1.0, abs=1e-2)


def _binned_density(logp: np.ndarray) -> np.ndarray:
    """Mass of each N_BINS x N_BINS bin from the density on the fine grid (rows = y, cols = x)."""
    cell = (2 * EXTENT / N_FINE) ** 2
    p = np.exp(logp).reshape(N_FINE, N_FINE) * cell   # grid() uses indexing="xy": [iy, ix]
    k = N_FINE // N_BINS
    return p.reshape(N_BINS, k, N_BINS, k).sum(axis=(1, 3))


def _histogram(x: np.ndarray) -> np.ndarray:
    edges = np.linspace(-EXTENT, EXTENT, N_BINS + 1)
    h, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=[edges, edges])   # rows = y, cols = x
    return h / len(x)


@pytest.mark.parametrize("name", WITH_DENSITY)
def test_samples_match_density(name, fine_grid):
    toy = TOYS[name]
    x = toy.sample(N_SAMPLES, np.random.default_rng(123))
    assert x.shape == (N_SAMPLES, 2)
    assert np.isfinite(x).all()
    pts, _ = fine_grid
    tv = 0.5 * np.abs(_histogram(x) - _binned_density(_logp_on_grid(name, pts))).sum()
    assert tv < 0.03, f"{name}: total variation {tv:.4f} between samples and density"


def test_binning_detects_a_wrong_density(fine_grid):
    """The TV check above has teeth: eight_gaussians samples vs the rings density are far apart."""
    x = TOYS["eight_gaussians"].sample(N_SAMPLES, np.random.default_rng(0))
    pts, _ = fine_grid
    tv = 0.5 * np.abs(_histogram(x) - _binned_density(_logp_on_grid("rings", pts))).sum()
    assert tv > 0.3


def test_checkerboard_samples_on_black_squares_with_equal_mass():
    toy = TOYS["checkerboard"]
    x = toy.sample(N_SAMPLES, np.random.default_rng(7))
    assert np.all(np.abs(x) <= 2)
    assert np.all(np.isfinite(toy.log_density(x)))
    fx, fy = np.floor(x[:, 0]).astype(int), np.floor(x[:, 1]).astype(int)
    assert np.all((fx + fy) % 2 == 0), "a sample lies on a white square"
    squares, counts = np.unique(np.stack([fx, fy], 1), axis=0, return_counts=True)
    assert len(squares) == 8
    np.testing.assert_allclose(counts / N_SAMPLES, 1 / 8, atol=0.005)
    # density: 1/8 on black squares, 0 on white squares and outside the board
    np.testing.assert_allclose(toy.log_density(np.array([[0.5, 0.5], [-1.5, 0.5], [1.5, -0.5]])), -np.log(8.0))
    assert np.all(toy.log_density(np.array([[0.5, -0.5], [1.5, 0.5], [2.5, 0.5], [0.5, -3.0]])) == -np.inf)


def test_two_spirals_has_no_closed_form_density():
    toy = get_toy("two_spirals")
    assert toy.log_density(np.zeros((5, 2))) is None
    x = toy.sample(1000, np.random.default_rng(0))
    assert x.shape == (1000, 2) and np.isfinite(x).all()


def test_sampling_is_deterministic_for_a_seed():
    for name, toy in TOYS.items():
        a = toy.sample(500, np.random.default_rng(5))
        b = toy.sample(500, np.random.default_rng(5))
        c = toy.sample(500, np.random.default_rng(6))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c), name


def test_get_toy_unknown_name_lists_available():
    with pytest.raises(ValueError) as exc:
        get_toy("moons")
    msg = str(exc.value)
    assert "moons" in msg
    for name in TOYS:
        assert name in msg
