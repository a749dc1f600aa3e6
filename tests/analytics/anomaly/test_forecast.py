"""Forecasts: the period comes from the data, the intervals hold about what they claim."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.anomaly.forecast import candidate_periods, detect_period, forecast
from tests.analytics.anomaly.data import seasonal


def test_finds_the_daily_period_and_covers_about_95_percent() -> None:
    inside = total = 0
    maes, snaive = [], []
    for seed in range(6):
        t, y = seasonal(24 * 40 + 48, step=3600.0, seed=seed, noise=2.0)
        hist_t, hist_y, fut = t[:-48], y[:-48], y[-48:]
        fc = forecast(hist_t, hist_y, 48)
        assert fc.period == 24
        inside += int(np.sum((fc.lower95 <= fut) & (fut <= fc.upper95)))
        total += fut.size
        maes.append(float(np.mean(np.abs(fc.point - fut))))
        snaive.append(float(np.mean(np.abs(np.tile(hist_y[-24:], 2) - fut))))
    assert 0.88 <= inside / total <= 0.995
    assert np.mean(maes) < np.mean(snaive)  # averaging seasons beats repeating the last one


def test_intervals_are_nested_and_timestamps_continue_the_grid() -> None:
    t, y = seasonal(2000, step=300.0, seed=1)
    fc = forecast(t, y, 12)
    assert np.allclose(fc.timestamps, t[-1] + 300.0 * np.arange(1, 13))
    assert np.all(fc.lower95 <= fc.lower80) and np.all(fc.lower80 <= fc.point)
    assert np.all(fc.point <= fc.upper80) and np.all(fc.upper80 <= fc.upper95)
    assert fc.period == 288


def test_deterministic() -> None:
    t, y = seasonal(1500, step=600.0, seed=5)
    a, b = forecast(t, y, 48), forecast(t, y, 48)
    for name in ("point", "lower80", "upper80", "lower95", "upper95"):
        assert np.array_equal(getattr(a, name), getattr(b, name))


def test_no_season_in_noise_and_short_inputs_still_forecast() -> None:
    rng = np.random.default_rng(0)
    t = 3600.0 * np.arange(400)
    assert detect_period(rng.normal(size=400), candidate_periods(3600.0, 400)) == 1
    short = forecast(t[:5], [1.0, 2.0, 3.0, 2.0, float("nan")], 10)
    assert short.point.shape == (10,) and np.all(np.isfinite(short.upper95))
    with pytest.raises(ValueError):
        forecast(t[:5], [1.0] * 5, 0)


def test_candidate_periods_need_whole_slots_and_two_seasons() -> None:
    assert candidate_periods(3600.0, 24 * 15) == [24, 168]
    assert candidate_periods(3600.0, 24 * 13) == [24]
    assert candidate_periods(300.0, 300) == [12]
    assert candidate_periods(7.0, 10_000) == []


def test_a_candidate_needing_more_history_sits_out_instead_of_the_backtest() -> None:
    """15 days of hours: a week fits twice, too few for its seasonal median to be backtested;
    the daily candidates still are."""
    t, y = seasonal(24 * 15, step=3600.0, seed=2)
    fc = forecast(t, y, 48)
    assert fc.period == 24
    assert fc.methods != ("naive",)
    assert not any(name.endswith("168") and "median" in name for name in fc.methods)
