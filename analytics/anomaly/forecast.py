"""Point forecasts with 80% and 95% intervals for a regularly sampled metric series (numpy only).

Why this design: which model suits a metric (a daily or weekly pattern, a random walk, a noisy
level) is not known in advance, and a model that is best on average can be badly wrong on one
series. So a few simple, well-understood candidates are backtested on the series' own recent past
(rolling origins, the same horizon), and the forecast is the mean of the best few: a combination
is rarely much worse than its best member and often better. The season lengths tried are found
from the step (an hour, a day, a week of slots) and kept only when the history holds enough of
them. The intervals are the empirical quantiles of the combination's own backtest errors at each
horizon step, so they are as wide as this series has needed, not as a Gaussian model would say.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Forecast", "detect_period", "forecast"]

_HOUR, _DAY, _WEEK = 3600.0, 86400.0, 7 * 86400.0
BACKTEST_ORIGINS = 400  # most recent rolling origins used to rank candidates and size intervals
TOP = 3  # candidates averaged
MIN_PER_STEP = 40  # fewer origins than this: interval quantiles pooled over the horizon
MIN_ORIGINS = 10  # fewest backtest origins worth ranking candidates on
_HW_GRID = [(a, g, phi) for a in (0.1, 0.3, 0.6) for g in (0.05, 0.2) for phi in (0.0, 0.9)]

Array = np.ndarray
Method = Callable[[Array, Array, int], Array]  # (series, origins, horizon) -> (origins, horizon)


@dataclass(frozen=True)
class Forecast:
    """Forecast of the ``horizon`` steps after the input's last timestamp."""

    timestamps: Array  # seconds since the epoch, last + k * step
    point: Array
    lower80: Array
    upper80: Array
    lower95: Array
    upper95: Array
    period: int  # main season length in steps (1 = none found)
    methods: tuple[str, ...]  # the candidates combined


def _regular_step(t: Array) -> float:
    d = np.diff(t)
    d = d[d > 0]
    return float(np.median(d)) if d.size else _HOUR


def _fill(y: Array) -> Array:
    """Forward-fill non-finite values (a leading gap takes the first finite value)."""
    y = np.array(y, dtype=float)
    bad = ~np.isfinite(y)
    if bad.all():
        return np.zeros_like(y)
    if bad.any():
        idx = np.where(~bad, np.arange(y.size), 0)
        np.maximum.accumulate(idx, out=idx)
        first = int(np.argmax(~bad))
        idx[:first] = first
        y = y[idx]
    return y


def candidate_periods(step: float, n: int) -> list[int]:
    """Slots per hour, day and week that are whole numbers and fit at least twice in n."""
    out = []
    for span in (_HOUR, _DAY, _WEEK):
        m = span / step
        if m >= 2 and abs(m - round(m)) < 1e-6 and n >= 2 * round(m):
            out.append(round(m))
    return out


def detect_period(y: Sequence[float] | Array, periods: Sequence[int]) -> int:
    """The season length in steps, 1 if none.

    A candidate m counts when its autocorrelation is at least 0.3 and clearly above the one at
    half the lag: a real cycle is out of phase half way round, while a smooth series correlates
    at every short lag. Of those, the shortest within 0.1 of the strongest wins (a daily pattern
    repeats weekly too; a week is chosen only when it explains clearly more)."""
    x = _fill(np.asarray(y, dtype=float))
    x = x - x.mean()
    power = float(np.mean(x * x))
    if power <= 0:
        return 1

    def r(m: int) -> float:
        return float(np.mean(x[m:] * x[:-m])) / power if m > 0 else 1.0

    good = {m: r(m) for m in periods if x.size >= 2 * m}
    good = {m: v for m, v in good.items() if v >= 0.3 and v > r(m // 2) + 0.1}
    if not good:
        return 1
    best = max(good.values())
    return min(m for m, v in good.items() if v >= best - 0.1)


# ---------------------------------------------------------------- candidates
def _naive(y: Array, o: Array, h: int) -> Array:
    return np.repeat(y[o - 1][:, None], h, axis=1)


def _snaive(m: int) -> Method:
    def f(y: Array, o: Array, h: int) -> Array:
        return y[o[:, None] - m + np.arange(h) % m]

    return f


def _smedian(m: int, k: int) -> Method:
    def f(y: Array, o: Array, h: int) -> Array:
        back = np.arange(1, k + 1)[None, :, None] * m
        return np.median(y[o[:, None, None] - back + (np.arange(h) % m)[None, None, :]], axis=1)

    return f


def _smedian_level(m: int, k: int) -> Method:
    """Seasonal median shifted by how far the last day's level sits from it (the shift fades)."""
    base = _smedian(m, k)
    w = max(1, m // 4)

    def f(y: Array, o: Array, h: int) -> Array:
        fc = base(y, o, h)
        recent = np.stack([y[o - j] for j in range(1, w + 1)], axis=1)
        past = base(y, o - w, w)[:, ::-1]  # the seasonal median of the same last w slots
        shift = np.median(recent - past, axis=1)
        fade = 0.97 ** np.arange(1, h + 1)
        return fc + shift[:, None] * fade[None, :]

    return f


def _holt_winters(y: Array, m: int) -> Method:
    """Additive Holt-Winters (damped trend or none), smoothing constants chosen on 1-step errors."""
    n = y.size
    grid = np.array(_HW_GRID)
    alpha, gamma, phi = grid[:, 0], grid[:, 1], grid[:, 2]
    beta = np.where(phi > 0, 0.05, 0.0)
    g = len(grid)
    level = np.full(g, y[:m].mean())
    trend = np.zeros(g)
    season = np.tile(y[:m] - y[:m].mean(), (g, 1))
    levels = np.empty((n, g))
    trends = np.empty((n, g))
    seasons = np.empty((n, g))
    sse = np.zeros(g)
    for t in range(n):
        s_old = season[:, t % m]
        pred = level + phi * trend + s_old
        if t >= m:
            sse += np.abs(y[t] - pred)
        new_level = alpha * (y[t] - s_old) + (1 - alpha) * (level + phi * trend)
        trend = beta * (new_level - level) + (1 - beta) * phi * trend
        level = new_level
        season[:, t % m] = gamma * (y[t] - level) + (1 - gamma) * s_old
        levels[t], trends[t], seasons[t] = level, trend, season[:, t % m]
    j = int(np.argmin(sse))
    lv, tr, se, ph = levels[:, j], trends[:, j], seasons[:, j], phi[j]

    def f(yy: Array, o: Array, h: int) -> Array:
        k = np.arange(1, h + 1)
        damp = np.cumsum(ph**k) if ph > 0 else np.zeros(h)
        last = o[:, None] - 1
        # the seasonal state for step k was last updated m slots before it
        s_idx = last - m + 1 + (k[None, :] - 1) % m
        return lv[last] + tr[last] * damp[None, :] + se[s_idx]

    return f


def _candidates(y: Array, periods: list[int]) -> list[tuple[str, Method, int]]:
    """(name, method, first usable origin)."""
    n = y.size
    out: list[tuple[str, Method, int]] = [("naive", _naive, 1)]
    for m in periods:
        out.append((f"snaive{m}", _snaive(m), m))
        k = min(4, n // m)
        if k >= 2:
            out.append((f"smedian{m}", _smedian(m, k), k * m))
            out.append((f"smedian_level{m}", _smedian_level(m, k), k * m + max(1, m // 4)))
        if n >= 3 * m:
            out.append((f"hw{m}", _holt_winters(y, m), 2 * m))
    return out


# ---------------------------------------------------------------- forecast
def forecast(timestamps: Sequence[float] | Array, values: Sequence[float] | Array, horizon: int) -> Forecast:
    """Forecast ``horizon`` steps after the last point (step = median spacing of the input)."""
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    t = np.asarray(timestamps, dtype=float)
    y = _fill(np.asarray(values, dtype=float))
    if y.size == 0:
        raise ValueError("no input values")
    n, h = y.size, horizon
    step = _regular_step(t) if t.size > 1 else _HOUR
    future = t[-1] + step * np.arange(1, h + 1)
    periods = candidate_periods(step, n)
    period = detect_period(y, periods)
    # a candidate needing so much history that it leaves fewer than MIN_ORIGINS origins sits out
    cands = [c for c in _candidates(y, periods) if c[2] <= n - h - MIN_ORIGINS + 1]
    if not cands:  # too short to backtest: last value, random-walk spread of the 1-step changes
        return _random_walk(y, future, h, period)
    start = max(max(c[2] for c in cands), n - h - BACKTEST_ORIGINS + 1)
    origins = np.arange(start, n - h + 1)
    truth = y[origins[:, None] + np.arange(h)]
    scored = []
    for name, fn, _ in cands:
        fc = fn(y, origins, h)
        scored.append((float(np.mean(np.abs(truth - fc))), name, fn))
    scored.sort(key=lambda s: s[0])
    best = scored[:TOP]
    back = np.mean([fn(y, origins, h) for _, _, fn in best], axis=0)
    now = np.array([n])
    point = np.mean([fn(y, now, h)[0] for _, _, fn in best], axis=0)
    err = truth - back
    axis = 0 if origins.size >= MIN_PER_STEP else None
    q = np.quantile(err, [0.025, 0.1, 0.9, 0.975], axis=axis)
    q = np.broadcast_to(np.asarray(q).reshape(4, -1), (4, h))
    lo95, lo80, hi80, hi95 = (
        point + np.minimum(q[0], 0),
        point + np.minimum(q[1], 0),
        point + np.maximum(q[2], 0),
        point + np.maximum(q[3], 0),
    )
    return Forecast(future, point, lo80, hi80, lo95, hi95, period, tuple(s[1] for s in best))


def _random_walk(y: Array, future: Array, h: int, period: int) -> Forecast:
    point = np.full(h, y[-1])
    d = np.diff(y) if y.size > 1 else np.zeros(1)
    grow = np.sqrt(np.arange(1, h + 1))
    q = np.quantile(d, [0.025, 0.1, 0.9, 0.975])
    return Forecast(
        future,
        point,
        point + min(q[1], 0) * grow,
        point + max(q[2], 0) * grow,
        point + min(q[0], 0) * grow,
        point + max(q[3], 0) * grow,
        period,
        ("naive",),
    )
