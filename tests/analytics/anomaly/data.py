"""Synthetic series for the anomaly tests (numpy, fixed seeds: no files, no network)."""

from __future__ import annotations

import numpy as np

START = 1_396_310_400.0  # 2014-04-01 00:00:00 UTC, a midnight


def seasonal(
    n: int, step: float = 300.0, seed: int = 7, noise: float = 1.0, amplitude: float = 10.0, level: float = 50.0
) -> tuple[np.ndarray, np.ndarray]:
    """A daily sine with Gaussian noise: (timestamps in seconds, values)."""
    rng = np.random.default_rng(seed)
    t = START + step * np.arange(n)
    y = level + amplitude * np.sin(2 * np.pi * (t % 86400.0) / 86400.0) + rng.normal(0.0, noise, n)
    return t, y
