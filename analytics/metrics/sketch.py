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

Bins are named by one integer *code* whose order is the order of the values
it stands for: the index itself for positive values (it may be negative for
values below 1), :data:`ZERO_CODE` for zero and magnitudes below
:data:`MIN_VALUE`, and ``NEGATIVE_BASE - index`` for negative values (by
their magnitude). Stored form (:meth:`Sketch.encode`): packed little-endian
``(int32 code, int64 count)`` pairs, 12 bytes a bin, which the Lua side
merges by adding counts without knowing ``gamma``, and which a query reads
with one ``numpy.frombuffer``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping

#: Relative accuracy of a quantile estimate (0.8 %: under the 1 % target
#: with room for the float rounding of the bin index).
ALPHA = 0.008
GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(GAMMA)
#: Magnitudes below this count as zero (DDSketch's ``min_indexable_value``).
MIN_VALUE = 1e-9
#: Bin codes: indexes of values within [1e-9, 1e18] stay within +/-3000.
ZERO_CODE = -(1 << 20)
NEGATIVE_BASE = -(1 << 21)
BIN = struct.Struct("<iq")


def bin_code(value: float) -> int:
    """The bin of ``value``."""
    magnitude = abs(value)
    if magnitude < MIN_VALUE:
        return ZERO_CODE
    index = math.ceil(math.log(magnitude) / _LOG_GAMMA)
    return index if value > 0 else NEGATIVE_BASE - index


def bin_value(code: int) -> float:
    """The representative value of bin ``code`` (within ``ALPHA`` of any
    value the bin holds)."""
    if code == ZERO_CODE:
        return 0.0
    if code < ZERO_CODE:
        return -2 * GAMMA ** (NEGATIVE_BASE - code) / (GAMMA + 1)
    return 2 * GAMMA**code / (GAMMA + 1)


class Sketch:
    """Bin counts of a set of samples. ``count`` is their number."""

    __slots__ = ("bins", "count")

    def __init__(self, bins: Mapping[int, int] | None = None) -> None:
        self.bins: dict[int, int] = dict(bins or {})
        self.count = sum(self.bins.values())

    @classmethod
    def of(cls, values: Iterable[float]) -> Sketch:
        sketch = cls()
        for value in values:
            sketch.add(value)
        return sketch

    def add(self, value: float, count: int = 1) -> None:
        code = bin_code(value)
        self.bins[code] = self.bins.get(code, 0) + count
        self.count += count

    def merge(self, other: Sketch | Mapping[int, int]) -> Sketch:
        """Add ``other``'s counts to this sketch (in place) and return it."""
        bins = other.bins if isinstance(other, Sketch) else other
        mine = self.bins
        for code, count in bins.items():
            mine[code] = mine.get(code, 0) + count
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
        for code in sorted(self.bins):  # code order is value order
            seen += self.bins[code]
            if seen > rank:
                value = bin_value(code)
                break
        if lo is not None and value < lo:
            value = lo
        if hi is not None and value > hi:
            value = hi
        return value

    def encode(self) -> bytes:
        return encode_bins(self.bins)

    @classmethod
    def decode(cls, data: bytes) -> Sketch:
        return cls(decode_bins(data))


def encode_bins(bins: Mapping[int, int]) -> bytes:
    pack = BIN.pack
    return b"".join(pack(code, count) for code, count in bins.items() if count)


def decode_bins(data: bytes) -> dict[int, int]:
    bins: dict[int, int] = {}
    for code, count in BIN.iter_unpack(data):
        bins[code] = bins.get(code, 0) + count
    return bins
