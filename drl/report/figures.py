"""Figures for the 2-D toys: progressive samples and per-level densities (paper Fig. 3), and
DRL versus the short-run T = 1 EBM (paper Fig. 2); and grids of image samples."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from drl.evaluate.quadrature import LevelDensity  # noqa: E402


def _scatter(ax, x, extent, title):
    ax.hist2d(x[:, 0], x[:, 1], bins=120, range=[[-extent, extent]] * 2, cmap="magma")
    ax.set_title(title, fontsize=8)


def _density(ax, ebm, t, extent, n, title):
    dens = LevelDensity(ebm, t, extent, n)
    ax.imshow(np.exp(dens.log_g_grid).reshape(n, n), origin="lower", extent=[-extent, extent] * 2, cmap="magma")
    ax.set_title(title, fontsize=8)


def _clean(axes):
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")


# Figure 3: top, progressively generated samples x_T, ..., x_0; bottom, the estimated marginal
# density of x_t from EBM level t (normalised by quadrature).
def progressive_figure(ebm, levels: np.ndarray, extent: float, n_grid: int = 200):
    T = ebm.T
    fig, axes = plt.subplots(2, T + 1, figsize=(1.8 * (T + 1), 3.8))
    for i, x in enumerate(levels):
        _scatter(axes[0, i], x, extent, f"samples x_{T - i}")
    axes[1, 0].axis("off")
    for i, t in enumerate(reversed(range(T))):
        _density(axes[1, i + 1], ebm, t, extent, n_grid, f"density level {t}")
    _clean(axes)
    fig.tight_layout()
    return fig


# Figure 2: data, then for each run its samples x_0 and its level-0 density.
def comparison_figure(data: np.ndarray, runs: list[tuple[str, object, np.ndarray]], extent: float,
                      n_grid: int = 200):
    fig, axes = plt.subplots(1, 1 + 2 * len(runs), figsize=(2.2 * (1 + 2 * len(runs)), 2.4))
    _scatter(axes[0], data, extent, "data")
    for i, (name, ebm, x0) in enumerate(runs):
        _scatter(axes[1 + 2 * i], x0, extent, f"{name}: samples")
        _density(axes[2 + 2 * i], ebm, 0, extent, n_grid, f"{name}: density")
    _clean(axes)
    fig.tight_layout()
    return fig


def _grid(images: np.ndarray, n: int, cols: int | None = None) -> np.ndarray:
    """The first n uint8 images (N, H, W, C) tiled ``cols`` to a row (default: a square) with
    1-pixel white borders."""
    n = min(n, len(images))
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w, c = images.shape[1:]
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
    return grid


def sample_grid_figure(panels: list[tuple[str, np.ndarray]], n: int = 64):
    """Uncurated samples (paper Figs. 1, 4, 11-16): one grid of the first n images per run, side by side."""
    grids = [(name, _grid(images, n)) for name, images in panels]
    fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 5.4), squeeze=False)
    for ax, (name, grid) in zip(axes[0], grids):
        gray = grid.shape[-1] == 1
        ax.imshow(grid[..., 0] if gray else grid, cmap="gray" if gray else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    return fig


def interpolation_figure(rows: list[np.ndarray]):
    """Interpolations between two generated samples (paper Figs. 5, 8-10): one row of uint8
    images (points, H, W, C) per pair, the endpoints leftmost and rightmost."""
    strip = _grid(np.concatenate(rows), sum(map(len, rows)), cols=len(rows[0]))
    gray = strip.shape[-1] == 1
    fig, ax = plt.subplots(figsize=(0.5 + 0.09 * strip.shape[1], 0.3 + 0.09 * strip.shape[0]))
    ax.imshow(strip[..., 0] if gray else strip, cmap="gray" if gray else None, vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_axis_off()
    return fig


# Figure 6: left, the adapted HMC step size per time step; centre, the acceptance rate (of the
# adaptation's final round, and of each long-run chain length); right, the log Z_0 estimate versus
# the number of samples for each chain length (x axis in log scale, as in the paper).
def hmc_figure(step_size: np.ndarray, adapt_acceptance: np.ndarray, runs: dict[int, tuple[np.ndarray, list]],
               band: tuple[float, float] = (0.6, 0.9)):
    """``runs``: {steps per level: (mean acceptance per level [T], [[m, log Z_0 estimate], ...])}."""
    T = len(step_size)
    t = np.arange(T)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(t, step_size)
    axes[0].set(xlabel="time step t", ylabel="HMC step size", yscale="log", title="adapted step size")
    axes[1].axhspan(*band, color="0.9")
    axes[1].plot(t, adapt_acceptance, label="adaptation")
    for k, (acc, curve) in runs.items():
        if not np.isnan(acc).all():
            axes[1].plot(t, acc, label=f"{k} steps/level", alpha=0.7)
        m, log_z = np.asarray(curve).T
        axes[2].plot(m, log_z, label=f"{k} steps/level ({k * T} steps)")
    axes[1].set(xlabel="time step t", ylabel="acceptance rate", ylim=(0, 1), title="acceptance rate")
    axes[1].legend(fontsize=7)
    axes[2].set(xlabel="number of samples", ylabel="log Z_0 estimate", xscale="log", title="estimated log Z_0")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def samples_figure(run: str, samples: np.ndarray):
    """samples.png: a grid of the first 64 images, or a scatter plot of 2-D samples x_0."""
    if samples.ndim == 4:
        return sample_grid_figure([(run, samples)], 64)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(samples[-1, :, 0], samples[-1, :, 1], s=2, alpha=0.5, linewidths=0)
    ax.set_aspect("equal")
    ax.set_title(f"{run}: samples x_0")
    return fig


def seeds_figure(rows: list[tuple[str, list[float | None], list[float | None]]], metric: str = "FID"):
    """A metric against training seeds: per row (label, one value per seed, the real-data reference of
    each seed's evaluation), each seed's value (a diverged seed, None, is drawn as an x at the top), the
    mean over seeds +- their standard deviation, and the real-data reference as a grey tick."""
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2.5, 4.2))
    finite = [v for _, vs, refs in rows for v in vs + refs if v is not None]
    top = max(finite) * 1.15 if finite else 1.0
    for i, (_, values, refs) in enumerate(rows):
        ok = [v for v in values if v is not None]
        ax.scatter([i + 0.08 * (j - (len(values) - 1) / 2) for j in range(len(values))],
                   [v if v is not None else top for v in values], c=["C0" if v is not None else "C3" for v in values],
                   marker="o", s=18, zorder=3)
        if len(ok) > 1:
            ax.errorbar(i + 0.3, np.mean(ok), yerr=np.std(ok, ddof=1), fmt="s", color="k", ms=4, capsize=3)
        ref = [r for r in refs if r is not None]
        if ref:
            ax.hlines(np.mean(ref), i - 0.35, i + 0.35, color="0.6", lw=2)
    ax.set_xticks(range(len(rows)), [label for label, _, _ in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, top * 1.05)
    ax.set_title(f"{metric} per training seed (dots), mean +- sd over seeds (squares), real-data reference (grey)",
                 fontsize=8)
    fig.tight_layout()
    return fig
