"""The quantile sketch alone: accuracy, merging, encoding."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.metrics.sketch import ALPHA, ZERO_CODE, Sketch, bin_code, bin_value, decode_bins, encode_bins


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def close(estimate: float, truth: float, rel: float = ALPHA) -> bool:
    if truth == 0 or abs(truth) < 1e-9:
        return abs(estimate) < 1e-9
    return abs(estimate - truth) <= rel * abs(truth) * (1 + 1e-9)


values_st = st.lists(
    st.one_of(st.floats(min_value=1e-6, max_value=1e12), st.floats(min_value=-1e12, max_value=-1e-6), st.just(0.0)),
    min_size=1,
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(values_st, st.floats(min_value=0, max_value=1))
def test_every_quantile_is_within_relative_accuracy(values: list[float], q: float) -> None:
    sketch = Sketch.of(values)
    assert close(sketch.quantile(q), exact(values, q))


@settings(max_examples=100, deadline=None)
@given(values_st, values_st)
def test_merging_equals_the_sketch_of_the_union(a: list[float], b: list[float]) -> None:
    merged = Sketch.of(a).merge(Sketch.of(b))
    assert merged.bins == Sketch.of(a + b).bins and merged.count == len(a) + len(b)
    assert Sketch.decode(merged.encode()).bins == merged.bins
    assert Sketch.decode(Sketch.of(a).encode() + Sketch.of(b).encode()).bins == merged.bins


def test_lognormal_percentiles_within_one_percent() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1.2) for _ in range(5000)]
    sketch = Sketch.of(values)
    for q in (0.5, 0.9, 0.95, 0.99):
        truth = exact(values, q)
        assert abs(sketch.quantile(q) - truth) / truth <= 0.01
    # Compact: a few hundred bins at most for a wide lognormal.
    assert len(sketch.bins) < 500


def test_min_and_max_clamp_the_extremes() -> None:
    values = [3.0, 5.0, 7.5]
    sketch = Sketch.of(values)
    assert sketch.quantile(0, 3.0, 7.5) == 3.0 and sketch.quantile(1, 3.0, 7.5) == 7.5
    assert Sketch().quantile(0.5) is None


def test_bins_round_trip_and_value_one_is_bin_zero() -> None:
    # commit_events.lua writes events as samples of value 1 in bin 0.
    assert bin_code(1.0) == 0
    assert bin_code(0.0) == ZERO_CODE
    # Code order is value order, across signs.
    values = [-1e12, -3.0, -1e-3, 0.0, 1e-6, 0.5, 2.0, 1e15]
    codes = [bin_code(v) for v in values]
    assert codes == sorted(codes) and len(set(codes)) == len(codes)
    for value in values:
        if value:
            assert abs(bin_value(bin_code(value)) - value) <= ALPHA * abs(value)
    assert decode_bins(encode_bins({1: 2, -5: 1, ZERO_CODE: 2**40})) == {1: 2, -5: 1, ZERO_CODE: 2**40}
    with pytest.raises(ValueError):
        Sketch.of([1.0]).quantile(1.5)
