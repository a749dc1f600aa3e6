"""Streaming anomaly detector: one point at a time, about 1 KB of state per series.

Why this design (scored on the Numenta Anomaly Benchmark, see ``bench/anomaly.py``):

* Four simple models give each point a *surprise* ``s = -log10(p)``, ``p`` a two-sided Gaussian
  tail probability:

  - the value against a slow global mean/variance (spikes, values never seen);
  - a short EWMA of the value against the same (sustained excursions);
  - the value against a time-of-day profile (a broken daily pattern: a missing peak, a flat day);
    a bin seen only a few times borrows the pooled variance of all bins;
  - the short EWMA against a slower one, in units of the point-to-point noise (a level shift,
    also on a series whose global variance is already inflated by earlier shifts).

* Gaussian tails are badly calibrated on real metrics (heavy tails, recurring spikes), so a
  surprise only counts as *novel* when it exceeds what that model produced in all but a few
  (``rare_blocks``) of the last ``blocks`` blocks of ``block_len`` points. Counting blocks rather
  than points makes a burst count once, and recurring spikes stop alerting once they are usual.
* The score is ``1 - reference / surprise`` (0 when not novel), the best of the four models.
* One alert per event: after an alert the score is multiplied by ``mute_factor`` (which keeps it
  under the threshold) for ``mute_points`` points, and for as long as the unmuted score stays
  above the threshold, up to ``mute_cap`` points. NAB (and an on-call person) rewards the first
  alert of an event and penalizes repeats; a level shift would otherwise alert again and again
  until the models have caught up with it.
* The first ``warm_blocks * block_len`` points only learn (score 0); a daily profile needs about
  two days of data before its alerts are reliable.

The state is a fixed-size record (1,001 bytes with the defaults): float64 scalars and profile
means, float32 profile variances, block maxima quantized to one byte on a log scale. The
in-memory state *is* the serialized state (the arrays hold exactly those types), so
``from_bytes(to_bytes())`` continues with identical scores. Everything is stored little-endian.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_THRESHOLD", "Detector", "DetectorConfig", "Score", "score_series"]

#: The one alert threshold the service ships: alert when ``Score.score >= DEFAULT_THRESHOLD``.
DEFAULT_THRESHOLD = 0.45

_DAY = 86400.0
_SQRT2 = math.sqrt(2.0)
_LN10 = math.log(10.0)
_HALF_SQRT_PI = math.sqrt(math.pi) / 2.0  # mean |d| of a normal d times this is its sigma
_Q_SCALE = 8.0  # block maxima stored as ceil(8 * log2(1 + s)) in a byte: steps of 9%, up to 4e9
_S_MAX = 2.0 ** (255 / _Q_SCALE) - 1.0  # surprises are capped here, so a capped one is never novel
_MODELS = 4  # global value, short-term level, time-of-day profile, level change
_VERSION = 1


@dataclass(frozen=True)
class DetectorConfig:
    """The detector's single configuration (the same for every series: no per-series tuning)."""

    global_span: float = 1000.0  # points in the slow global mean/variance
    level_span: float = 6.0  # points in the short-term level
    slow_span: float = 50.0  # points in the slower level the short one is compared with
    noise_span: float = 200.0  # points in the point-to-point noise estimate (mean |difference|)
    bins: int = 48  # time-of-day profile bins (30 minutes each)
    bin_min_visits: int = 3  # a bin's profile is used once it has seen this many points
    bin_prior: float = 3.0  # a bin's variance is shrunk toward the pooled one, as if seen this often
    bin_alpha_min: float = 0.05  # slowest adaptation of a bin's mean/variance
    block_len: int = 32  # points per block of the novelty reference
    blocks: int = 64  # blocks remembered (2048 points)
    rare_blocks: int = 5  # a surprise is novel when exceeded in at most this many blocks
    warm_blocks: int = 6  # blocks seen before anything can be novel (a learning period of 192 points)
    min_surprise: float = 3.0  # p < 1e-3 before anything can be novel
    mute_points: int = 20  # points muted after an alert (longer while the event goes on)
    mute_cap: int = 192  # an ongoing event keeps the mute for at most this many points
    mute_factor: float = 0.4  # score multiplier while muted: below the threshold, still visible
    threshold: float = DEFAULT_THRESHOLD  # alert threshold (an alert starts the mute)


@dataclass(frozen=True)
class Score:
    """One point's result: anomaly score in [0, 1], whether it crosses the configured alert
    threshold, and the expected value with a ~95% band (for display: what "normal" looked like)."""

    score: float
    expected: float
    lower: float
    upper: float
    alert: bool = False


def _surprise(z: float) -> float:
    """-log10 of the two-sided normal tail of z, stable far into the tail."""
    if z < 5.0:
        return -math.log10(max(math.erfc(z / _SQRT2), 1e-300))
    x = z / _SQRT2
    return min(_S_MAX, (x * x + math.log(x * math.sqrt(math.pi))) / _LN10)


def _quantize(s: float) -> int:
    """Surprise to a byte on a log scale, rounded up (a reference is never understated)."""
    return min(255, math.ceil(_Q_SCALE * math.log2(1.0 + s)))


def _dequantize(q: int) -> float:
    return 2.0 ** (q / _Q_SCALE) - 1.0


def _ewma_var_factor(alpha: float) -> float:
    """Variance of an EWMA of independent noise, as a multiple of the noise variance."""
    return alpha / (2.0 - alpha)


# version, points seen, mute left, points muted so far, points in the current block, next block slot;
# mean, variance, short level, slow level, pooled bin variance, mean |difference|, last value
_SCALARS = struct.Struct("<BIHHHHddddddd")


class Detector:
    """Streaming detector for one series; ``update`` each point in time order."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = c = config or DetectorConfig()
        self._n = 0
        self._mute = 0  # muted points left
        self._muted = 0  # points since the alert that started the mute
        self._pos = 0  # points in the current block
        self._blk = 0  # next block slot to overwrite
        self._mean = 0.0
        self._var = 0.0
        self._level = 0.0
        self._slow = 0.0
        self._rvar = 0.0  # pooled variance of the values around their bins' means
        self._dabs = 0.0  # mean |x[t] - x[t-1]|
        self._last = 0.0
        self._pmean = array("d", bytes(8 * c.bins))  # float64: a large offset keeps its detail
        self._pvar = array("f", bytes(4 * c.bins))
        self._pcount = array("H", bytes(2 * c.bins))
        self._cur = array("B", bytes(_MODELS))  # current block's max per model
        self._hist = array("B", bytes(_MODELS * c.blocks))  # finished blocks' maxima
        self._top: list[tuple[int, int]] = []  # per model: k-th and (k+1)-th largest block maxima
        self._rank_blocks()

    # ------------------------------------------------------------------ scoring
    def update(self, timestamp: float, value: float) -> Score:
        """Score ``value`` at ``timestamp`` (seconds) with the state before it, then learn it.

        A non-finite value (a gap) scores 0 and is not learned."""
        c = self.config
        if not math.isfinite(timestamp):
            raise ValueError(f"timestamp must be finite, got {timestamp!r}")
        if not math.isfinite(value):
            exp, half = self._expected(timestamp)
            return Score(0.0, exp, exp - half, exp + half, False)
        b = int((timestamp % _DAY) * c.bins / _DAY) % c.bins
        score = 0.0
        if self._n > 0:
            score = self._novelty(value, b)
        else:
            self._level = self._slow = value
        self._learn(value, b)
        score = self._mute_repeats(score)
        exp, half = self._expected(timestamp)
        return Score(score, exp, exp - half, exp + half, score >= c.threshold)

    def _novelty(self, value: float, b: int) -> float:
        """The four surprises of ``value``, each against its block reference; moves the levels."""
        c = self.config
        n = self._n
        # a variance floor that scales with the series (an offset or a unit changes nothing)
        # and keeps a flat line's first change finite
        eps2 = 1e-6 * self._var + (1e-12 * self._mean) ** 2 + 1e-300
        a_level, a_slow = 1.0 / c.level_span, 1.0 / c.slow_span
        level = self._level + a_level * (value - self._level)
        slow = self._slow + a_slow * (value - self._slow)
        s_global = _surprise(abs(value - self._mean) / math.sqrt(self._var + eps2))
        level_var = self._var * _ewma_var_factor(a_level) + eps2
        s_level = _surprise(abs(level - self._mean) / math.sqrt(level_var))
        s_prof = 0.0
        cnt = self._pcount[b]
        if cnt >= c.bin_min_visits:
            pvar = (cnt * self._pvar[b] + c.bin_prior * self._rvar) / (cnt + c.bin_prior)
            s_prof = _surprise(abs(value - self._pmean[b]) / math.sqrt(pvar + eps2))
        s_change = 0.0
        if n > 1:
            noise2 = (self._dabs * _HALF_SQRT_PI) ** 2 / 2.0  # a difference has twice the noise variance
            change_var = noise2 * (_ewma_var_factor(a_level) + _ewma_var_factor(a_slow)) + eps2
            s_change = _surprise(abs(level - slow) / math.sqrt(change_var))
            a_noise = max(1.0 / (n - 1), 1.0 / c.noise_span)
            self._dabs += a_noise * (abs(value - self._last) - self._dabs)
        self._level, self._slow = level, slow
        warm = n >= c.warm_blocks * c.block_len
        score = 0.0
        for k, s in enumerate((s_global, s_level, s_prof, s_change)):
            if warm and s > c.min_surprise:
                ref = max(_dequantize(self._reference(k)), c.min_surprise)
                if s > ref:
                    score = max(score, 1.0 - ref / s)
            q = _quantize(s)
            if q > self._cur[k]:
                self._cur[k] = q
        return min(score, 1.0)

    def _mute_repeats(self, score: float) -> float:
        """One alert per event: mute after an alert, and keep muting while the event goes on."""
        c = self.config
        if self._mute > 0:
            self._mute -= 1
            self._muted += 1
            if score >= c.threshold and self._muted < c.mute_cap:
                self._mute = c.mute_points
            return score * c.mute_factor
        if score >= c.threshold:
            self._mute = c.mute_points
            self._muted = 0
        return score

    def _reference(self, k: int) -> int:
        """The (rare_blocks + 1)-th largest of model k's block maxima, current block included."""
        top, nxt = self._top[k]
        cur = self._cur[k]
        return top if cur >= top else max(cur, nxt)

    def _rank_blocks(self) -> None:
        """Cache the order statistics of the finished blocks (they change once per block)."""
        c = self.config
        rare = c.rare_blocks
        self._top = []
        for k in range(_MODELS):
            row = sorted(self._hist[k * c.blocks : (k + 1) * c.blocks], reverse=True)
            row.append(0)
            self._top.append((row[rare - 1] if rare > 0 else 255, row[rare]))

    def _learn(self, value: float, b: int) -> None:
        c = self.config
        n = self._n
        a = max(1.0 / (n + 1), 1.0 / c.global_span)
        d = value - self._mean
        self._mean += a * d
        self._var = (1.0 - a) * (self._var + a * d * d)
        if self._pcount[b] > 0:
            r = value - self._pmean[b]
            self._rvar += a * (r * r - self._rvar)
        cnt = min(self._pcount[b] + 1, 65535)
        self._pcount[b] = cnt
        ab = max(1.0 / cnt, c.bin_alpha_min)
        d = value - self._pmean[b]
        self._pmean[b] += ab * d
        self._pvar[b] = (1.0 - ab) * (self._pvar[b] + ab * d * d)
        self._last = value
        self._n = n + 1
        if n > 0:
            self._pos += 1
            if self._pos == c.block_len:
                for k in range(_MODELS):
                    self._hist[k * c.blocks + self._blk] = self._cur[k]
                    self._cur[k] = 0
                self._blk = (self._blk + 1) % c.blocks
                self._pos = 0
                self._rank_blocks()

    def _expected(self, timestamp: float) -> tuple[float, float]:
        """Expected value and half-width of its ~95% band: the time-of-day profile when it is
        known and tighter than the global spread, else the global mean."""
        c = self.config
        b = int((timestamp % _DAY) * c.bins / _DAY) % c.bins
        if self._pcount[b] >= c.bin_min_visits and self._pvar[b] < self._var:
            return float(self._pmean[b]), 1.96 * math.sqrt(self._pvar[b])
        return self._mean, 1.96 * math.sqrt(self._var)

    # ------------------------------------------------------------------ state
    def _scalars(self) -> tuple[Any, ...]:
        return (self._n, self._mute, self._muted, self._pos, self._blk, self._mean, self._var, self._level,
                self._slow, self._rvar, self._dabs, self._last)  # fmt: skip

    def _arrays(self) -> tuple[array[Any], ...]:
        return self._pmean, self._pvar, self._pcount, self._cur, self._hist

    def to_bytes(self) -> bytes:
        """The whole state, fixed size for a given config (the config itself is not stored)."""
        head = _SCALARS.pack(_VERSION, *self._scalars())
        return b"".join([head, *(_little(arr).tobytes() for arr in self._arrays())])

    @classmethod
    def from_bytes(cls, data: bytes, config: DetectorConfig | None = None) -> Detector:
        """Rebuild a detector saved by ``to_bytes`` (with the same config)."""
        det = cls(config)
        if len(data) < _SCALARS.size:
            raise ValueError("truncated detector state")
        version, *scalars = _SCALARS.unpack_from(data, 0)
        if version != _VERSION:
            raise ValueError(f"unknown detector state version {version}")
        (det._n, det._mute, det._muted, det._pos, det._blk, det._mean, det._var, det._level,
         det._slow, det._rvar, det._dabs, det._last) = scalars  # fmt: skip
        off = _SCALARS.size
        for arr in det._arrays():
            size = arr.itemsize * len(arr)
            chunk = data[off : off + size]
            if len(chunk) != size:
                raise ValueError("truncated detector state")
            arr[:] = _little(array(arr.typecode, chunk))
            off += size
        if off != len(data):
            raise ValueError("detector state has trailing bytes")
        det._rank_blocks()
        return det


def _little(arr: array[Any]) -> array[Any]:
    """``arr`` in little-endian byte order (a swapped copy on a big-endian machine)."""
    if sys.byteorder == "little":
        return arr
    out = array(arr.typecode, arr)
    out.byteswap()
    return out


def score_series(
    timestamps: Sequence[float] | Iterable[float], values: Iterable[float], config: DetectorConfig | None = None
) -> list[float]:
    """Scores of a whole series, point by point (what the offline command writes)."""
    det = Detector(config)
    return [det.update(float(t), float(v)).score for t, v in zip(timestamps, values, strict=True)]
