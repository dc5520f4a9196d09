"""2-D toy densities (paper Figures 2-3).  Each has a sampler and, where it exists, its
log density in closed form so that KL(p_data || p_model) can be computed on a grid."""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


class Toy2D:
    name: str = ""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def log_density(self, x: np.ndarray) -> np.ndarray | None:
        """log p_data(x) for x of shape [N, 2], or None where no closed form exists."""
        return None


class Checkerboard(Toy2D):
    """4x4 board on [-2, 2]^2 whose 8 black unit squares carry density 1/8 each (FFJORD's)."""

    name = "checkerboard"

    def sample(self, n, rng):
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
        return np.stack([x1, x2], 1)

    def log_density(self, x):
        inside = np.all(np.abs(x) <= 2, axis=1)
        black = (np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2 == 0
        return np.where(inside & black, -np.log(8.0), -np.inf)


class GaussianMixture(Toy2D):
    def __init__(self, name: str, centers: np.ndarray, std: float):
        self.name, self.centers, self.std = name, np.asarray(centers, float), std

    def sample(self, n, rng):
        k = rng.integers(0, len(self.centers), n)
        return self.centers[k] + self.std * rng.standard_normal((n, 2))

    def log_density(self, x):
        d2 = ((x[:, None, :] - self.centers[None]) ** 2).sum(-1)
        comp = -d2 / (2 * self.std**2) - np.log(2 * np.pi * self.std**2)
        return logsumexp(comp, axis=1) - np.log(len(self.centers))


class Rings(Toy2D):
    """Concentric rings: uniform angle, radius |r_k + s n| for a uniformly chosen ring k."""

    name = "rings"

    def __init__(self, radii=(0.5, 1.0, 1.5, 2.0), std=0.08):
        self.radii, self.std = np.asarray(radii, float), std

    def sample(self, n, rng):
        r = np.abs(self.radii[rng.integers(0, len(self.radii), n)] + self.std * rng.standard_normal(n))
        theta = rng.uniform(0, 2 * np.pi, n)
        return np.stack([r * np.cos(theta), r * np.sin(theta)], 1)

    def log_density(self, x):
        r = np.maximum(np.linalg.norm(x, axis=1), 1e-12)[:, None]
        c = -0.5 * np.log(2 * np.pi * self.std**2)
        comp = np.logaddexp(c - (r - self.radii) ** 2 / (2 * self.std**2),
                            c - (r + self.radii) ** 2 / (2 * self.std**2))
        return logsumexp(comp, axis=1) - np.log(len(self.radii)) - np.log(2 * np.pi * r[:, 0])


class TwoSpirals(Toy2D):
    """Two interleaved spirals with Gaussian jitter (no closed-form density: test LL only)."""

    name = "two_spirals"

    def sample(self, n, rng):
        u = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
        sign = np.where(rng.integers(0, 2, n) == 0, 1.0, -1.0)
        x = np.stack([sign * u * np.cos(u), sign * u * np.sin(u)], 1) / 4.5
        return x + 0.08 * rng.standard_normal((n, 2))


_ANGLES = np.arange(8) * np.pi / 4
TOYS = {
    "checkerboard": Checkerboard(),
    "eight_gaussians": GaussianMixture("eight_gaussians", 2 * np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], 1), 0.25),
    "grid_gaussians": GaussianMixture("grid_gaussians",
                                      np.stack(np.meshgrid(np.arange(-2, 3), np.arange(-2, 3)), -1).reshape(-1, 2) * 0.8,
                                      0.1),
    "rings": Rings(),
    "two_spirals": TwoSpirals(),
}


def get_toy(name: str) -> Toy2D:
    if name not in TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; available: {sorted(TOYS)}")
    return TOYS[name]
