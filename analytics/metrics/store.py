"""Metric rollups: registering series, committing batches, answering queries.

Layout (see :mod:`analytics.keyspace`): a metric's series registry and tag
index are one hash each; its data lives in *chunks*, one hash per (series,
tier, :data:`CHUNK_BUCKETS` consecutive buckets), whose fields are bucket
offsets. Chunking keeps a range query to a few ``HGETALL`` per series
(24 h at 1 min is 12 chunks) while keeping every hash small, and makes
retention a matter of deleting whole keys, found by their expiry time in
``analytics:rollups:expiry``.

Writes: the worker folds a batch of queue entries into one delta per
(series, tier, bucket) in Python and applies them with
``lua/commit_metrics.lua``, which refuses the lot if any entry is no longer
pending (someone else counted it) and otherwise merges the deltas,
acknowledges and deletes the entries, sets aside the records it cannot
read (``analytics:dlq:metrics``) and publishes the updated 10 s buckets, in
one atomic step. So a redelivered batch never counts twice, and a record is
dead-lettered once, never both counted and dead-lettered.

Why one module of over 400 lines: registering series, committing deltas and
answering queries all read and write the same chunk layout (keys, field
offsets, tiers); kept together, a change of the layout is made and reviewed
in one place.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import orjson
import redis

from analytics import keyspace
from analytics.errors import ValidationError
from analytics.lua_scripts import lua_source
from analytics.metrics.sketch import GAMMA, NEGATIVE_BASE, ZERO_CODE, bin_code, encode_bins
from analytics.pipeline.deadletters import INVALID_RECORD, DeadLetter, dlq_key
from analytics.pipeline.queue import Entry
from analytics.redis_client import resp2_twin
from analytics.settings import Settings
from analytics.tally import Tally

#: Rollup tiers (bucket seconds), finest first.
TIERS = (10, 60, 3600, 86400)
#: Buckets per chunk hash: 120 keeps a chunk's stats hash in Redis's compact
#: listpack encoding (default ``hash-max-listpack-entries`` is 128). A
#: bucket's field is its offset in the chunk as three digits ("007").
CHUNK_BUCKETS = 120
#: Points per series a query may ask for.
MAX_POINTS = 10_000
SERIES_ID_LENGTH = 12
#: Seconds a process trusts its cache of registered series.
KNOWN_TTL = 60.0
QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def series_id(tags: Mapping[str, str]) -> str:
    """Short stable id of a tag set (keys within one metric's namespace)."""
    return hashlib.blake2b(orjson.dumps(sorted(tags.items())), digest_size=6).hexdigest()


EMPTY_SERIES = series_id({})


def tier_for(bucket: int) -> int:
    """The coarsest tier whose resolution divides ``bucket``."""
    return max(r for r in TIERS if bucket % r == 0)


def auto_bucket(span_seconds: float) -> int:
    """A bucket for a query without one: the finest tier giving <= 500 points."""
    for resolution in TIERS:
        if span_seconds / resolution <= 500:
            return resolution
    return TIERS[-1] * math.ceil(span_seconds / TIERS[-1] / 500)


def bucket_range(start_ms: int, end_ms: int, bucket: int) -> tuple[int, int]:
    """The first bucket start (epoch s, aligned to ``bucket``) and the
    number of buckets up to ``end_ms`` (exclusive); raises past
    :data:`MAX_POINTS`."""
    first = start_ms // 1000 // bucket * bucket
    count = max(0, -(-(end_ms - first * 1000) // (bucket * 1000)))
    if count > MAX_POINTS:
        raise ValidationError(
            "too many points",
            {"bucket": [f"The range holds more than {MAX_POINTS} buckets of this size: ask for larger buckets."]},
        )
    return first, count


@dataclass
class MetricCommitResult(Tally):
    samples: int = 0
    entries: int = 0
    #: Entries another worker had already committed (redeliveries).
    skipped_entries: int = 0
    #: Malformed records set aside in the dead-letter store (same step).
    invalid: int = 0
    #: Entries set aside whole (unreadable, or failing every delivery).
    dead_entries: int = 0
    #: The series committed: (name, series id, tags, oldest and newest sample, epoch s).
    series: list[tuple[str, str, dict[str, str], int, int]] = field(default_factory=list)


def _tags_json(tags: Mapping[str, str]) -> bytes:
    return orjson.dumps(dict(sorted(tags.items())))


class MetricStore:
    def __init__(self, client: redis.Redis, settings: Settings, live_channel: str = keyspace.LIVE_METRICS) -> None:
        self._redis = client
        self.limit = settings.max_series_per_metric
        self.live_channel = live_channel
        self.retention = {
            res: int(days * 86400) for res, days in zip(TIERS, settings.rollup_retention_days, strict=True)
        }
        #: Range queries read many chunk hashes: through a RESP2 client.
        self._bulk = resp2_twin(client)
        # Its HGETALL replies stay flat [field, value, ...] lists: they are
        # sliced into offsets and values, never looked up by field.
        self._bulk.set_response_callback("HGETALL", _flat)
        self._commit = client.register_script(lua_source("rollup_lib.lua", "commit_metrics.lua"))
        self._register = client.register_script(lua_source("rollup_lib.lua", "register_series.lua"))
        #: (metric, series id) known to be registered: saves a round trip per
        #: request. Forgotten every KNOWN_TTL seconds, since cleanup may drop
        #: a series (then its next sample is checked against the limit again).
        self._known: set[tuple[str, str]] = set()
        self._known_since = time.monotonic()

    def event_metric_args(self) -> list[Any]:
        """The trailing arguments of ``commit_events.lua`` that make it count
        events into the ``events.{type}`` metrics."""
        args: list[Any] = [
            keyspace.ROLLUP_EXPIRY,
            self.live_channel,
            keyspace.METRICS + "events.",
            EMPTY_SERIES,
            len(TIERS),
        ]
        for res in TIERS:
            args += (res, res * CHUNK_BUCKETS, self.retention[res])
        return args

    # -- ingest --------------------------------------------------------------
    def _forget_if_stale(self) -> None:
        if time.monotonic() - self._known_since > KNOWN_TTL or len(self._known) > 100_000:
            self._known.clear()
            self._known_since = time.monotonic()

    def all_known(self, series: Iterable[tuple[str, str]]) -> bool:
        """Whether this process knows every (metric, series id) of ``series``
        as registered, so that :meth:`register` would have nothing to do
        (no I/O)."""
        self._forget_if_stale()
        return all(s in self._known for s in series)

    def register(self, series: Mapping[tuple[str, str], Mapping[str, str]]) -> set[tuple[str, str]]:
        """Register (metric, series id) -> tags under the cardinality limit;
        returns those refused because their metric is full."""
        self._forget_if_stale()
        by_metric: dict[str, list[tuple[str, Mapping[str, str]]]] = {}
        for (name, sid), tags in series.items():
            if (name, sid) not in self._known:
                by_metric.setdefault(name, []).append((sid, tags))
        if not by_metric:
            return set()
        pipe = self._redis.pipeline(transaction=False)
        for name, items in by_metric.items():
            args: list[Any] = [self.limit, len(items)]
            for sid, tags in items:
                args += (sid, _tags_json(tags), len(tags), *(f"{k}:{v}" for k, v in tags.items()))
            self._register(keys=[keyspace.metric_series(name), keyspace.metric_tags(name)], args=args, client=pipe)
        refused: set[tuple[str, str]] = set()
        for (name, items), reply in zip(by_metric.items(), pipe.execute(), strict=True):
            bad = {sid.decode() for sid in reply}
            refused.update((name, sid) for sid in bad)
            self._known.update((name, sid) for sid, _ in items if sid not in bad)
        return refused

    # -- processing ----------------------------------------------------------
    def commit(
        self, entries: list[Entry], group: str = keyspace.GROUP, dead: Mapping[str, list[DeadLetter]] | None = None
    ) -> MetricCommitResult:
        """Fold ``entries`` into rollups and acknowledge them, atomically.

        If some entries were already committed by another worker, the script
        applies nothing; they are dropped and the rest is folded again.
        Records that cannot be read as samples are set aside by the same
        script (reason ``invalid_record``), so only the commit that
        acknowledges their entry dead-letters them: once, and never lost.
        ``dead`` adds dead letters by entry id, written in the same step:
        entries set aside whole by the caller
        (:class:`analytics.events.commit.MetricCommitter`), with no records left.
        """
        dead = dead or {}
        result = MetricCommitResult()
        pending = list(entries)
        while pending:
            bad: list[tuple[Entry, Any]] = []
            seen: list[tuple[str, str, dict[str, str], int, int]] = []
            args = self._commit_args(pending, group, bad, seen)
            whole = [letter for e in pending for letter in dead.get(e.id, ())]
            letters = [DeadLetter.of_record(record, INVALID_RECORD, entry.deliveries) for entry, record in bad] + whole
            args += (round(time.time(), 3), len(letters))
            for letter in letters:
                args += letter.script_args()
            reply = self._commit(keys=[keyspace.METRICS_QUEUE, dlq_key("metrics")], args=args)
            if int(reply[0]) == 1:
                result.entries += len(pending)
                result.samples += sum(len(e.records) for e in pending) - len(bad)
                result.invalid += len(bad)
                result.dead_entries += sum(e.id in dead for e in pending)
                result.series = seen
                break
            gone = {m.decode() for m in reply[1]}
            result.skipped_entries += len(gone)
            pending = [e for e in pending if e.id not in gone]
        return result

    def _commit_args(
        self,
        entries: list[Entry],
        group: str,
        bad: list[tuple[Entry, Any]],
        seen: list[tuple[str, str, dict[str, str], int, int]],
    ) -> list[Any]:
        """The script's arguments; records it cannot read go to ``bad``, the
        series written (with their newest sample) to ``seen``."""
        cells: dict[tuple[str, str, int, int], list[Any]] = {}
        series: dict[tuple[str, str], dict[str, str]] = {}
        latest: dict[tuple[str, str], int] = {}
        earliest: dict[tuple[str, str], int] = {}
        ids_of: dict[tuple[tuple[str, str], ...], str] = {}
        for entry in entries:
            for record in entry.records:
                try:
                    name, value, tags = str(record["n"]), float(record["v"]), dict(record["g"])
                    seconds = int(record["ts"]) // 1000
                    if not math.isfinite(value):
                        raise ValueError("not finite")
                except (KeyError, TypeError, ValueError):
                    # Not written by track_metrics: set aside, never retried.
                    bad.append((entry, record))
                    continue
                tag_key = tuple(sorted(tags.items()))
                sid = ids_of.get(tag_key)
                if sid is None:
                    sid = ids_of[tag_key] = series_id(tags)
                series[(name, sid)] = tags
                if seconds > latest.get((name, sid), -1):
                    latest[(name, sid)] = seconds
                if seconds < earliest.get((name, sid), seconds + 1):
                    earliest[(name, sid)] = seconds
                key = bin_code(value)
                square = value * value
                for res in TIERS:
                    bucket = seconds - seconds % res
                    cell = cells.get((name, sid, res, bucket))
                    if cell is None:
                        cells[(name, sid, res, bucket)] = [1, value, value, value, square, {key: 1}]
                        continue
                    cell[0] += 1
                    cell[1] += value
                    if value < cell[2]:
                        cell[2] = value
                    if value > cell[3]:
                        cell[3] = value
                    cell[4] += square
                    bins = cell[5]
                    bins[key] = bins.get(key, 0) + 1
        args: list[Any] = [group, keyspace.ROLLUP_EXPIRY, self.live_channel, len(entries)]
        args += [e.id for e in entries]
        args.append(len(series))
        seen += ((name, sid, tags, earliest[(name, sid)], latest[(name, sid)]) for (name, sid), tags in series.items())
        for (name, sid), tags in series.items():
            args += (
                keyspace.metric_series(name),
                keyspace.metric_tags(name),
                keyspace.metric_seen(name),
                sid,
                _tags_json(tags),
                latest[(name, sid)],
                len(tags),
                *(f"{k}:{v}" for k, v in tags.items()),
            )
        args.append(len(cells))
        finest = TIERS[0]
        for (name, sid, res, bucket), (c, s, mn, mx, sq, bins) in cells.items():
            chunk_len = res * CHUNK_BUCKETS
            chunk = bucket - bucket % chunk_len
            args += (
                keyspace.rollup_chunk(name, res, sid, chunk),
                f"{(bucket - chunk) // res:03d}",
                c,
                s,
                mn,
                mx,
                sq,
                encode_bins(bins),
                chunk + chunk_len + self.retention[res],
            )
            if res == finest:
                args += (orjson.dumps(name), _tags_json(series[(name, sid)]), bucket)
            else:
                args.append("")
        return args

    # -- querying ------------------------------------------------------------
    def series(self, name: str, tags: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """Series id -> tags of the series of ``name`` having all ``tags``,
        by intersecting the tag index (no scan of the series)."""
        if not tags:
            raw = cast(dict[bytes, bytes], self._redis.hgetall(keyspace.metric_series(name)))
            return {sid.decode(): orjson.loads(t) for sid, t in raw.items()}
        found_lists = self._redis.hmget(keyspace.metric_tags(name), [f"{k}:{v}" for k, v in tags.items()])
        if any(ids is None for ids in found_lists):
            return {}
        lists = cast(list[bytes], found_lists)
        step = SERIES_ID_LENGTH
        sets = sorted(({ids[i : i + step].decode() for i in range(0, len(ids), step)} for ids in lists), key=len)
        matched = set.intersection(*sets)
        if not matched:
            return {}
        ordered = sorted(matched)
        found = self._redis.hmget(keyspace.metric_series(name), ordered)
        return {sid: orjson.loads(t) for sid, t in zip(ordered, found, strict=True) if t is not None}

    def query(
        self,
        name: str,
        series: Mapping[str, Mapping[str, str]],
        *,
        start_ms: int,
        end_ms: int,
        bucket: int,
        agg: str,
        filter_tags: Mapping[str, str],
        group_by: str | None,
    ) -> list[dict[str, Any]]:
        """Points of ``agg`` per group of ``series``, one per ``bucket``
        seconds from the bucket holding ``start_ms`` up to ``end_ms``
        (exclusive); an empty bucket is ``None``."""
        first, count = bucket_range(start_ms, end_ms, bucket)
        if not series:
            return []
        last = first + count * bucket
        res = tier_for(bucket)
        chunk_len = res * CHUNK_BUCKETS
        chunks = range(first - first % chunk_len, last, chunk_len)
        wants_sketch = agg in QUANTILES

        groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for sid, tags in series.items():
            out = dict(filter_tags)
            if group_by is not None and group_by in tags:
                out[group_by] = tags[group_by]
            groups.setdefault(tuple(sorted(out.items())), []).append(sid)

        pipe = self._bulk.pipeline(transaction=False)
        for sids in groups.values():
            for sid in sids:
                for chunk in chunks:
                    key = keyspace.rollup_chunk(name, res, sid, chunk)
                    pipe.hgetall(key)
                    if wants_sketch:
                        pipe.hgetall(key + ":q")
        replies = iter(pipe.execute())

        out_series: list[dict[str, Any]] = []
        for group, sids in groups.items():
            stored = _Stored()
            sketches = _Stored() if wants_sketch else None
            for _sid in sids:
                for chunk in chunks:
                    stored.add(chunk, next(replies))
                    if sketches is not None:
                        sketches.add(chunk, next(replies))
            points = _points(agg, first, count, bucket, res, stored, sketches)
            if group_by is not None and all(value is None for _, value in points):
                continue  # a group without data in the range is left out
            out_series.append({"tags": dict(group), "points": points})
        out_series.sort(key=lambda item: sorted(item["tags"].items()))
        return out_series

    def series_points(self, reads: Sequence[tuple[str, str, int, int, str]], bucket: int) -> list[list[list[Any]]]:
        """Points of single series, each over its own range: per read
        (metric, series id, first bucket start, bucket count, aggregate
        other than a quantile), ``[[bucket start, value or None], ...]`` at
        ``bucket`` seconds, a tier. One pipelined round trip for every read:
        live detection reads all the series it advances at once."""
        res = tier_for(bucket)
        chunk_len = res * CHUNK_BUCKETS
        pipe = self._bulk.pipeline(transaction=False)
        plans = []
        for name, sid, first, count, agg in reads:
            if agg in QUANTILES:
                raise ValueError("series_points reads no sketches")
            chunks = range(first - first % chunk_len, first + count * bucket, chunk_len)
            for chunk in chunks:
                pipe.hgetall(keyspace.rollup_chunk(name, res, sid, chunk))
            plans.append(chunks)
        replies = iter(pipe.execute())
        found = []
        for (_, _, first, count, agg), chunks in zip(reads, plans, strict=True):
            stored = _Stored()
            for chunk in chunks:
                stored.add(chunk, next(replies))
            found.append(_points(agg, first, count, bucket, res, stored, None))
        return found


def _flat(response: list[bytes] | None, **options: Any) -> list[bytes]:
    """HGETALL's reply as Redis sends it (RESP2): field, value, field..."""
    return response or []


class _Stored:
    """The fields of a group's chunk hashes, gathered without a Python step
    per bucket: bucket offsets (field names), values, and per chunk its
    start and field count."""

    __slots__ = ("bases", "offsets", "sizes", "values")

    def __init__(self) -> None:
        self.offsets: list[bytes] = []
        self.values: list[bytes] = []
        self.bases: list[int] = []
        self.sizes: list[int] = []

    def add(self, chunk: int, fields: list[bytes]) -> None:
        """Add the fields of one chunk hash (a flat HGETALL reply)."""
        if fields:
            self.offsets += fields[0::2]
            self.values += fields[1::2]
            self.bases.append(chunk)
            self.sizes.append(len(fields) // 2)

    def starts(self, res: int) -> Any:
        """Start (epoch s) of each stored bucket."""
        at = np.repeat(np.asarray(self.bases, dtype=np.int64), self.sizes)
        at += _offsets(self.offsets) * res
        return at


def _offsets(fields: list[bytes]) -> Any:
    """Bucket offsets from their field names. They are written as three
    digits, so they are read as a byte matrix rather than parsed one by one."""
    joined = b"".join(fields)
    if len(joined) == 3 * len(fields):
        digits = np.frombuffer(joined, dtype=np.uint8).reshape(-1, 3).astype(np.int64) - 48
        return digits @ np.array([100, 10, 1], dtype=np.int64)
    return np.array([int(f) for f in fields], dtype=np.int64)


def _points(
    agg: str, first: int, count: int, bucket: int, res: int, stored: _Stored, sketches: _Stored | None
) -> list[list[Any]]:
    """Merge stored buckets (``stored``: packed stats; ``sketches``: packed
    bins, for quantiles) into ``count`` output buckets and compute ``agg``
    for each. Vectorized: a day at 1 minute over a few series is thousands
    of stored buckets, too many for a Python loop."""
    stamps = range(first, first + count * bucket, bucket)
    if not stored.offsets:
        return [[t, None] for t in stamps]
    at = stored.starts(res)
    keep = (at >= first) & (at < first + count * bucket)
    index = (at[keep] - first) // bucket
    stats = np.frombuffer(b"".join(stored.values), dtype="<f8").reshape(-1, 5)[keep]
    c = np.bincount(index, weights=stats[:, 0], minlength=count)
    empty = (c <= 0).tolist()
    if agg in QUANTILES:
        assert sketches is not None
        found = _quantiles(QUANTILES[agg], first, count, bucket, res, index, stats, sketches)
        found[c <= 0] = np.nan
        # NaN (no data) is the one value not equal to itself.
        return [[t, v if v == v else None] for t, v in zip(stamps, found.tolist(), strict=True)]
    if agg == "count":
        values = c.astype(np.int64).tolist()
    elif agg in ("min", "max"):
        extreme = np.full(count, np.inf if agg == "min" else -np.inf)
        (np.minimum if agg == "min" else np.maximum).at(extreme, index, stats[:, 2 if agg == "min" else 3])
        values = extreme.tolist()
    else:
        total = np.bincount(index, weights=stats[:, 1], minlength=count)
        result: Any
        with np.errstate(divide="ignore", invalid="ignore"):
            if agg == "sum":
                result = total
            elif agg == "rate":
                result = total / bucket
            elif agg == "avg":
                result = total / c
            else:  # stddev (population), from the sums of values and of squares
                squares = np.bincount(index, weights=stats[:, 4], minlength=count)
                mean = total / c
                result = np.sqrt(np.maximum(0.0, squares / c - mean * mean))
        values = result.tolist()
    return [[t, None if e else v] for t, v, e in zip(stamps, values, empty, strict=True)]


#: numpy view of a stored bin (see :data:`analytics.metrics.sketch.BIN`).
_BIN_DTYPE = np.dtype([("code", "<i4"), ("count", "<i8")])
#: One int64 sort key per bin, ordered by (output bucket, code): any int32
#: code shifted to be non-negative, below the bucket (< MAX_POINTS) times 2**32.
_CODE_SHIFT = 1 << 31
_OWNER_FACTOR = 1 << 32


def _quantiles(
    q: float, first: int, count: int, bucket: int, res: int, index: Any, stats: Any, sketches: _Stored
) -> Any:
    """The ``q``-quantile of each output bucket, merging the sketches of the
    stored buckets that fall in it (``index``, ``stats``: output bucket and
    packed stats of each stored bucket in range; ``sketches``: the packed
    bins of the stored buckets, with their own offsets), as an array with
    NaN where there is none. Same answers as
    :meth:`analytics.metrics.sketch.Sketch.quantile`, for all buckets at once:
    sort every bin by (bucket, code), then find in the running count the
    first bin past each bucket's rank. Nothing is done per stored bucket in
    Python: the bins of all buckets are one ``frombuffer``."""
    mn = np.full(count, np.inf)
    mx = np.full(count, -np.inf)
    np.minimum.at(mn, index, stats[:, 2])
    np.maximum.at(mx, index, stats[:, 3])
    if not sketches.offsets:
        return np.full(count, np.nan)
    at = sketches.starts(res)
    lengths = np.fromiter(map(len, sketches.values), dtype=np.int64, count=len(sketches.values)) // _BIN_DTYPE.itemsize
    bins = np.frombuffer(b"".join(sketches.values), dtype=_BIN_DTYPE)
    # Each bin's output bucket; bins of buckets outside the range dropped.
    owner = np.repeat((at - first) // bucket, lengths)
    inside = np.repeat((at >= first) & (at < first + count * bucket), lengths)
    owner, bins = owner[inside], bins[inside]
    if not len(bins):
        return np.full(count, np.nan)
    # Bins of equal (bucket, code) may come in any order: they are adjacent
    # either way, and the search below picks a code, not a position.
    order = np.argsort(owner * _OWNER_FACTOR + (bins["code"].astype(np.int64) + _CODE_SHIFT))
    owner, codes, counts = owner[order], bins["code"][order], bins["count"][order]
    running = np.cumsum(counts)
    totals = np.bincount(owner, weights=counts, minlength=count)
    before = np.concatenate(([0.0], np.cumsum(totals)[:-1]))
    has = totals > 0
    targets = before + q * (totals - 1)
    at = np.searchsorted(running, targets[has], side="right")
    picked = codes[np.minimum(at, len(codes) - 1)].astype(np.int64)
    estimate = np.where(
        picked == ZERO_CODE,
        0.0,
        np.where(
            picked < ZERO_CODE,
            -2 * GAMMA ** (NEGATIVE_BASE - picked).astype(np.float64) / (GAMMA + 1),
            2 * GAMMA ** picked.astype(np.float64) / (GAMMA + 1),
        ),
    )
    values = np.full(count, np.nan)
    values[has] = estimate
    if q == 0:
        values[has] = mn[has]
    elif q == 1:
        values[has] = mx[has]
    values = np.minimum(np.maximum(values, mn), mx)
    values[~has] = np.nan
    return values
