"""A mergeable quantile sketch with relative accuracy (DDSketch-style).

Why this sketch: quantiles must be answered for any bucket size, any tag
filter and any group, so per-bucket summaries have to *merge* exactly.
DDSketch (Masson, Rim, Lee, VLDB 2019) maps a value ``x > 0`` to the bin
``ceil(log_gamma(x))`` with ``gamma = (1 + alpha) / (1 - alpha)``; every
value of a bin lies within a relative distance ``alpha`` of the bin's
representative value ``2 * gamma**i / (gamma + 1)``. Merging is adding bin
counts, so a merged sketch is exactly the sketch of the union of the samples:
no error accumulates by merging, unlike averaging percentiles (StatsD) or
t-digest centroids.

Bins are named by strings, which is also how they are stored in Redis
(:mod:`analytics.metrics.store`): ``"12"`` / ``"-3"`` for positive values
(the index may be negative for values below 1), ``"n12"`` for negative
values (by their magnitude) and ``"z"`` for zero and magnitudes below
:data:`MIN_VALUE`. The text form is ``"key:count,key:count"``; the Lua side
merges it by adding counts, without knowing ``gamma``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

#: Relative accuracy of a quantile estimate (0.8 %: under the 1 % target
#: with room for the float rounding of the bin index).
ALPHA = 0.008
GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(GAMMA)
#: Magnitudes below this count as zero (DDSketch's ``min_indexable_value``).
MIN_VALUE = 1e-9
ZERO = "z"


def bin_key(value: float) -> str:
    """The bin of ``value``."""
    magnitude = abs(value)
    if magnitude < MIN_VALUE:
        return ZERO
    index = math.ceil(math.log(magnitude) / _LOG_GAMMA)
    return str(index) if value > 0 else f"n{index}"


def bin_value(key: str) -> float:
    """The representative value of bin ``key`` (within ``ALPHA`` of any
    value the bin holds)."""
    if key == ZERO:
        return 0.0
    negative = key.startswith("n")
    index = int(key[1:] if negative else key)
    value = 2 * GAMMA ** index / (GAMMA + 1)
    return -value if negative else value


class Sketch:
    """Bin counts of a set of samples. ``count`` is their number."""

    __slots__ = ("bins", "count")

    def __init__(self, bins: Mapping[str, int] | None = None) -> None:
        self.bins: dict[str, int] = dict(bins or {})
        self.count = sum(self.bins.values())

    @classmethod
    def of(cls, values: Iterable[float]) -> Sketch:
        sketch = cls()
        for value in values:
            sketch.add(value)
        return sketch

    def add(self, value: float, count: int = 1) -> None:
        key = bin_key(value)
        self.bins[key] = self.bins.get(key, 0) + count
        self.count += count

    def merge(self, other: Sketch | Mapping[str, int]) -> Sketch:
        """Add ``other``'s counts to this sketch (in place) and return it."""
        bins = other.bins if isinstance(other, Sketch) else other
        mine = self.bins
        for key, count in bins.items():
            mine[key] = mine.get(key, 0) + count
            self.count += count
        return self

    def quantile(self, q: float, lo: float | None = None, hi: float | None = None) -> float | None:
        """The ``q``-quantile (0 <= q <= 1), or None when empty.

        Estimates the sample of rank ``floor(q * (count - 1))`` in sorted
        order, within relative error ``ALPHA``. ``lo``/``hi`` (the exact min
        and max, when known) clamp the estimate and answer q=0 and q=1 exactly.
        """
        if not 0 <= q <= 1:
            raise ValueError("q must be within [0, 1]")
        if self.count <= 0:
            return None
        if q == 0 and lo is not None:
            return lo
        if q == 1 and hi is not None:
            return hi
        rank = q * (self.count - 1)
        seen = 0
        value = 0.0
        for key in sorted(self.bins, key=bin_value):  # value order
            seen += self.bins[key]
            if seen > rank:
                value = bin_value(key)
                break
        if lo is not None and value < lo:
            value = lo
        if hi is not None and value > hi:
            value = hi
        return value

    def encode(self) -> str:
        return encode_bins(self.bins)

    @classmethod
    def decode(cls, text: str | bytes) -> Sketch:
        return cls(decode_bins(text))


def encode_bins(bins: Mapping[str, int]) -> str:
    return ",".join(f"{key}:{count}" for key, count in bins.items() if count)


def decode_bins(text: str | bytes) -> dict[str, int]:
    if isinstance(text, bytes):
        text = text.decode()
    bins: dict[str, int] = {}
    if not text:
        return bins
    for part in text.split(","):
        key, _, count = part.partition(":")
        bins[key] = bins.get(key, 0) + int(count)
    return bins


_VALUES: dict[bytes, float] = {}


def _cached_value(key: bytes) -> float:
    value = _VALUES.get(key)
    if value is None:
        if len(_VALUES) > 100_000:
            _VALUES.clear()
        value = _VALUES[key] = bin_value(key.decode())
    return value


def merged_quantile(texts: Iterable[bytes], q: float, lo: float | None = None,
                    hi: float | None = None) -> float | None:
    """:meth:`Sketch.quantile` of the merge of stored bin texts, without
    building :class:`Sketch` objects (the query hot path: one call per point)."""
    bins: dict[bytes, int] = {}
    get = bins.get
    for text in texts:
        for part in text.split(b","):
            key, _, number = part.partition(b":")
            bins[key] = get(key, 0) + int(number)
    total = sum(bins.values())
    if total <= 0:
        return None
    if q == 0 and lo is not None:
        return lo
    if q == 1 and hi is not None:
        return hi
    rank = q * (total - 1)
    seen = 0
    value = 0.0
    for key, n in sorted(bins.items(), key=lambda item: _cached_value(item[0])):
        seen += n
        if seen > rank:
            value = _cached_value(key)
            break
    if lo is not None and value < lo:
        value = lo
    if hi is not None and value > hi:
        value = hi
    return value
