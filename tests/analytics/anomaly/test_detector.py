"""The streaming detector: it alerts on a clear anomaly, stays quiet otherwise, and its state is
small, deterministic and resumable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics.anomaly import DEFAULT_THRESHOLD, Detector, DetectorConfig, score_series
from tests.analytics.anomaly.data import seasonal


def run(det: Detector, t: np.ndarray, y: np.ndarray) -> list[float]:
    return [det.update(float(a), float(b)).score for a, b in zip(t, y, strict=True)]


@pytest.mark.parametrize(("sign", "scale", "offset"), [(1.0, 1.0, 0.0), (-1.0, 1.0, 0.0), (1.0, 1e-3, 1e6)])
def test_clear_spike_alerts_within_two_points_and_normal_points_stay_low(
    sign: float, scale: float, offset: float
) -> None:
    """Also in other units and far from zero: nothing in the detector depends on the scale."""
    t, y = seasonal(6 * 288)
    spike = 5 * 288 + 100
    y[spike] += sign * 12.0  # 12 noise sigmas
    scores = score_series(t, y * scale + offset)
    assert max(scores[spike : spike + 3]) >= DEFAULT_THRESHOLD
    # the first ~2 days learn the time-of-day profile: judged after them
    normal = [s for i, s in enumerate(scores) if i >= 2 * 288 and not spike <= i < spike + 40]
    assert sum(s >= DEFAULT_THRESHOLD for s in normal) <= 0.002 * len(normal)
    assert float(np.quantile(normal, 0.99)) < 0.2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_level_shift_alerts_once_at_its_start(seed: int) -> None:
    t, y = seasonal(6 * 288, seed=seed)
    shift = 5 * 288
    y[shift:] += 8.0
    scores = score_series(t, y)
    alerts = [i for i, s in enumerate(scores) if s >= DEFAULT_THRESHOLD and i >= 2 * 288]  # after learning
    assert alerts and shift <= alerts[0] <= shift + 6
    assert alerts == [alerts[0]], "the shift goes on, the alert is not repeated"


def test_each_of_several_level_shifts_alerts_once() -> None:
    """A series that steps between levels: the global variance soon includes the steps, so only
    the change model (short level against a slower one, in units of the point-to-point noise)
    still sees each new step. (Steps far more frequent than this become the series' normal
    behaviour: a step is novel while at most ``rare_blocks`` blocks of the last 2048 points
    were as surprising.)"""
    rng = np.random.default_rng(1)
    levels = [40.0, 20.0, 55.0, 30.0, 45.0]
    y = np.repeat(levels, 1500) + rng.normal(0.0, 2.0, 1500 * len(levels))
    t = 300.0 * np.arange(y.size)
    scores = score_series(t, y)
    alerts = [i for i, s in enumerate(scores) if s >= DEFAULT_THRESHOLD and i >= 300]
    steps = [1500 * j for j in range(1, len(levels))]
    assert all(any(s <= a < s + 10 for a in alerts) for s in steps)
    assert len(alerts) == len(steps)


def test_a_broken_daily_pattern_alerts() -> None:
    """A day whose peak is missing: every value is in the usual range, only the time of day is off."""
    t, y = seasonal(8 * 288, seed=5, amplitude=20.0)
    day = slice(7 * 288, 7 * 288 + 144)
    y[day] = 50.0 + np.random.default_rng(1).normal(0.0, 1.0, 144)
    scores = score_series(t, y)
    assert max(scores[day]) >= DEFAULT_THRESHOLD
    assert max(scores[2 * 288 : 7 * 288]) < DEFAULT_THRESHOLD


def test_scores_and_band_are_sane() -> None:
    t, y = seasonal(3 * 288)
    det = Detector()
    for a, b in zip(t, y, strict=True):
        r = det.update(float(a), float(b))
        assert 0.0 <= r.score <= 1.0
        assert r.alert == (r.score >= DEFAULT_THRESHOLD)
        assert r.lower <= r.expected <= r.upper
    assert abs(r.expected - y[-1]) < 5.0  # the profile knows the time of day by now
    assert r.upper - r.lower < 10.0


def test_flat_and_non_finite_values_do_not_break_it() -> None:
    det = Detector()
    for i in range(500):
        r = det.update(300.0 * i, 45.0)
        assert r.score == 0.0
    assert det.update(150_000.0, math.nan).score == 0.0
    assert det.update(150_300.0, math.inf).score == 0.0
    assert det.update(150_600.0, 90.0).score >= DEFAULT_THRESHOLD  # first change on a flat line
    with pytest.raises(ValueError):
        det.update(math.nan, 1.0)


def test_state_is_at_most_2kb_on_a_long_series() -> None:
    t, y = seasonal(30_000, seed=11)
    det = Detector()
    sizes = set()
    for i, (a, b) in enumerate(zip(t, y, strict=True)):
        det.update(float(a), float(b))
        if i % 5000 == 0:
            sizes.add(len(det.to_bytes()))
    sizes.add(len(det.to_bytes()))
    assert len(sizes) == 1, "the state has a fixed size"
    assert sizes.pop() <= 2048


def test_state_round_trip_mid_series_gives_identical_scores() -> None:
    t, y = seasonal(4000, seed=2)
    y[3000] += 15.0
    whole = Detector()
    expect = run(whole, t, y)
    for cut in (1, 250, 1999, 3000):
        first = Detector()
        head = run(first, t[:cut], y[:cut])
        blob = first.to_bytes()
        resumed = Detector.from_bytes(blob)
        assert resumed.to_bytes() == blob
        tail = run(resumed, t[cut:], y[cut:])
        assert head + tail == expect
        assert resumed.to_bytes() == whole.to_bytes()


def test_same_input_same_bytes_same_scores() -> None:
    t, y = seasonal(2500, seed=4)
    a, b = Detector(), Detector()
    assert run(a, t, y) == run(b, t, y)
    assert a.to_bytes() == b.to_bytes()


def test_causal_prefix_scores_equal_the_whole_runs_first_scores() -> None:
    t, y = seasonal(3000, seed=9)
    y[2000:2050] -= 9.0
    whole = score_series(t, y)
    for k in (400, 1500, 2025, 2999):
        assert score_series(t[:k], y[:k]) == whole[:k]


def test_from_bytes_rejects_foreign_state() -> None:
    blob = Detector().to_bytes()
    with pytest.raises(ValueError):
        Detector.from_bytes(blob[:-1])
    with pytest.raises(ValueError):
        Detector.from_bytes(blob + b"\0")
    with pytest.raises(ValueError):
        Detector.from_bytes(b"\x09" + blob[1:])


def test_default_config_is_the_shipped_threshold() -> None:
    assert DetectorConfig().threshold == DEFAULT_THRESHOLD
    with pytest.raises(AttributeError):
        DetectorConfig().threshold = 0.1  # type: ignore[misc]
