"""Live anomaly detection on the workers: every metric series and every
``events.<type>`` count is scored bucket by bucket as its buckets close,
by the same :class:`~analytics.anomaly.detector.Detector` (same
configuration) that ``analytics anomaly score`` runs offline.

How a bucket is scored exactly once:

* The point scored for a bucket is read from the rollups (the stored truth:
  a metric's mean, an event type's count), never from the batch in hand.
* A bucket is *closed* once its series has data two buckets later
  (:data:`CLOSE_LAG`: concurrent requests reach the queue in any order) and
  no queue entry older than that data is still pending (one could hold
  samples of the bucket: a worker SIGKILLed with it, say). Until then the
  worker keeps the series in mind and tries again after its next commit or
  when it goes idle; the recovery sweep closes the open buckets of a series
  idle for ``anomaly_idle_seconds``.
* A series' detector is a hash next to its rollups (``last`` scored
  bucket, ``det`` state, ``alerts`` state). The worker reads it, scores the
  closed buckets after ``last`` and writes the new state, the anomalies and
  the alert notifications with ``lua/advance_detector.lua``, which refuses
  if ``last`` has moved meanwhile. So a redelivered batch, a second worker
  or the sweep never scores a bucket twice, and a worker killed half-way
  has written nothing.

A metric's point is its bucket mean; a bucket without samples is no point
(the detector sees a gap in time). An event count's empty bucket is a zero
once the series has begun: a drop to nothing is news.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson
import redis

from analytics import keyspace
from analytics.anomaly.detector import Detector, DetectorConfig, Score
from analytics.lua_scripts import lua_source
from analytics.metrics.schemas import EVENT_METRIC_PREFIX
from analytics.metrics.store import EMPTY_SERIES, TIERS, MetricStore
from analytics.pipeline.queue import Entry, EventQueue
from analytics.settings import Settings
from analytics.tally import Tally

__all__ = ["AlertHook", "AlertOutcome", "DetectionReport", "LiveDetection", "Point"]

log = logging.getLogger(__name__)

#: Buckets one advance scores at most per series: a longer gap is skipped
#: (the detector sees a jump in time; an event count gets no zeros for it).
MAX_BUCKETS = 1440
#: Buckets a series' newest data must be past a bucket before it closes.
#: Concurrent requests reach the queue in any order: a sample of the next
#: bucket may be committed just before the last ones of this bucket. One
#: bucket of lag still flags a spike within two buckets.
CLOSE_LAG = 1
#: Times a series is read and scored again when another worker advanced it
#: between the read and the write.
RACE_RETRIES = 3
#: Stale series one sweep looks at.
SWEEP_BATCH = 200


@dataclass(frozen=True)
class Point:
    """One scored bucket of a series."""

    bucket: int
    value: float
    score: Score


@dataclass
class AlertOutcome:
    """What alert rules made of a series' new points: their new state
    (``None``: unchanged) and notifications (JSON objects, no PHI)."""

    state: bytes | None = None
    notices: list[dict[str, Any]] = field(default_factory=list)


class AlertHook(Protocol):
    """Alert rules, evaluated in the same step that advances a detector."""

    def evaluate(
        self, name: str, sid: str, tags: Mapping[str, str], points: Sequence[Point], prior: bytes | None
    ) -> AlertOutcome: ...


@dataclass
class DetectionReport(Tally):
    """What an advance or a sweep scored; true when it scored anything."""

    #: Buckets scored, anomalies found, notifications queued.
    points: int = 0
    anomalies: int = 0
    notices: int = 0
    #: Series whose buckets another worker had scored first.
    raced: int = 0

    def __bool__(self) -> bool:
        return self.points > 0


@dataclass
class _Seen:
    """A series with new data: its tags, oldest and newest data (epoch s)."""

    tags: Mapping[str, str]
    earliest: int
    latest: int


@dataclass(frozen=True)
class _Span:
    """What to score of one series: up to (not including) bucket ``end``,
    from its last scored bucket or, for a series never scored, from
    ``first``. ``skip_gaps``: a gap longer than :data:`MAX_BUCKETS` is
    skipped (an idle stretch) rather than scored in steps (a backlog)."""

    tags: Mapping[str, str]
    end: int
    first: int
    skip_gaps: bool = False


class LiveDetection:
    def __init__(
        self,
        client: redis.Redis,
        store: MetricStore,
        settings: Settings,
        queues: Sequence[EventQueue],
        *,
        alerts: AlertHook | None = None,
        notify: Callable[[], None] | None = None,
        live_channel: str = keyspace.LIVE_METRICS,
        config: DetectorConfig | None = None,
    ) -> None:
        self._redis = client
        self._store = store
        self._queues = queues
        self._alerts = alerts
        #: Asks for the outbox to be delivered (a Celery task in a worker),
        #: after a write that queued notifications; beat's run is the safety net.
        self._notify = notify
        self.enabled = settings.anomaly_detection
        self.resolution = settings.anomaly_resolution
        self.idle_seconds = settings.anomaly_idle_seconds
        self.live_channel = live_channel
        self.config = config or DetectorConfig()
        self._keep = anomaly_retention(settings)
        self._advance = client.register_script(lua_source("advance_detector.lua"))
        #: Series with data not yet scored, and the newest queue entry id
        #: that carried such data: they wait until nothing older is pending.
        self._waiting: dict[tuple[str, str], _Seen] = {}
        self._through = ""
        #: Last scored bucket per series as this process last saw it: a batch
        #: that closes no bucket costs no round trip.
        self._last: dict[tuple[str, str], int] = {}

    # -- what the worker committed -------------------------------------------
    def note_events(self, entries: Iterable[Entry]) -> None:
        """Remember the event types (and their newest timestamps) of committed entries."""
        if not self.enabled:
            return
        for entry in entries:
            if entry.problem:
                continue
            self._note_id(entry.id)
            for item in entry.items:  # queue items: type, timestamp (ms), ...
                seconds = int(item[1]) // 1000
                self._note(EVENT_METRIC_PREFIX + item[0], EMPTY_SERIES, {}, seconds, seconds)

    def note_metrics(
        self, entries: Iterable[Entry], series: Iterable[tuple[str, str, Mapping[str, str], int, int]]
    ) -> None:
        """Remember the series a metric commit touched: (name, series id,
        tags, oldest and newest sample, epoch s)."""
        if not self.enabled:
            return
        for entry in entries:
            self._note_id(entry.id)
        for name, sid, tags, earliest, latest in series:
            self._note(name, sid, tags, earliest, latest)

    def _note_id(self, entry_id: str) -> None:
        if _id_key(entry_id) > _id_key(self._through):
            self._through = entry_id

    def _note(self, name: str, sid: str, tags: Mapping[str, str], earliest: int, latest: int) -> None:
        seen = self._waiting.get((name, sid))
        if seen is None:
            self._waiting[(name, sid)] = _Seen(tags, earliest, latest)
        else:
            seen.earliest = min(seen.earliest, earliest)
            seen.latest = max(seen.latest, latest)

    # -- scoring -------------------------------------------------------------
    def advance(self) -> DetectionReport:
        """Score the buckets the noted data has closed, if no older queue
        entry is still pending (else they wait for a later call)."""
        report = DetectionReport()
        if not self._waiting:
            return report
        res = self.resolution
        due = {
            key: seen
            for key, seen in self._waiting.items()
            if self._closing(seen.latest) - res > self._last.get(key, -math.inf)
        }
        if not due:
            self._waiting.clear()
            self._through = ""
            return report
        oldest = self._oldest_pending()
        if oldest is not None and _id_key(oldest) <= _id_key(self._through):
            return report  # an older entry may still add to these buckets
        self._waiting.clear()
        self._through = ""
        spans = {}
        for key, seen in due.items():
            end = self._closing(seen.latest)
            # A series never scored starts a day back, or at its oldest data
            # noted if that is older (a backlog: scored in steps).
            first = min(seen.earliest - seen.earliest % res, end - MAX_BUCKETS * res)
            spans[key] = _Span(seen.tags, end, first)
        report, unfinished = self._score(spans)
        for key in unfinished:  # a backlog longer than one step: the next call goes on
            self._waiting[key] = due[key]
        return report

    def _closing(self, latest: int) -> int:
        """The first bucket still open for a series whose newest data is at
        ``latest`` (epoch s): the bucket holding it and the
        :data:`CLOSE_LAG` before it stay open."""
        res = self.resolution
        return latest - latest % res - CLOSE_LAG * res

    def sweep(self, now: float | None = None) -> DetectionReport:
        """Close the open bucket of series that have been idle for
        ``anomaly_idle_seconds`` (and score an event count's empty buckets
        since as zeros), unless entries that old are still pending."""
        report = DetectionReport()
        if not self.enabled:
            return report
        now = time.time() if now is None else now
        cutoff = now - self.idle_seconds
        oldest = self._oldest_pending()
        if oldest is not None and _id_key(oldest)[0] < cutoff * 1000:
            return report
        stale = cast(
            list[bytes], self._redis.zrangebyscore(keyspace.DETECTORS, "-inf", cutoff, start=0, num=SWEEP_BATCH)
        )
        if not stale:
            return report
        res = self.resolution
        closed_to = int(cutoff) - int(cutoff) % res  # buckets before this one have ended
        series: dict[tuple[str, str], _Span] = {}
        first = closed_to - MAX_BUCKETS * res
        for member in stale:
            name, sid = orjson.loads(member)
            series[(name, sid)] = _Span({}, closed_to, first, skip_gaps=True)
        # Tags of metric series (event counts have none).
        pipe = self._redis.pipeline(transaction=False)
        keys = [key for key in series if not key[0].startswith(EVENT_METRIC_PREFIX)]
        for name, sid in keys:
            pipe.hget(keyspace.metric_series(name), sid)
        for key, raw in zip(keys, pipe.execute(), strict=True):
            series[key] = _Span(orjson.loads(raw) if raw else {}, closed_to, first, skip_gaps=True)
        return self._score(series, swept=now)[0]

    def _oldest_pending(self) -> str | None:
        """Id of the oldest entry pending in any queue lane, or None."""
        pipe = self._redis.pipeline(transaction=False)
        lanes = [lane for queue in self._queues for lane in queue.lanes]
        for lane in lanes:
            pipe.xpending(lane, keyspace.GROUP)
        oldest: str | None = None
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) or not reply or not reply.get("pending"):
                continue  # no stream or group yet: nothing pending there
            low = reply["min"].decode() if isinstance(reply["min"], bytes) else str(reply["min"])
            if oldest is None or _id_key(low) < _id_key(oldest):
                oldest = low
        return oldest

    def _score(
        self, series: Mapping[tuple[str, str], _Span], *, swept: float | None = None
    ) -> tuple[DetectionReport, list[tuple[str, str]]]:
        """Score each series' buckets after its last scored one (at most
        :data:`MAX_BUCKETS` of them) up to its span's end, and write the
        results. A series another worker advanced meanwhile is read and
        scored again: the other may have stopped short of the buckets this
        one closes. Returns the report and the series with buckets left."""
        report = DetectionReport()
        unfinished: list[tuple[str, str]] = []
        for _ in range(RACE_RETRIES):
            raced = self._score_once(series, report, unfinished, swept)
            if not raced:
                break
            series = {key: series[key] for key in raced}
        if report.notices and self._notify is not None:
            self._notify()
        return report, unfinished

    def _score_once(
        self,
        series: Mapping[tuple[str, str], _Span],
        report: DetectionReport,
        unfinished: list[tuple[str, str]],
        swept: float | None,
    ) -> list[tuple[str, str]]:
        """One try of :meth:`_score`, counted into ``report`` (the series with
        buckets left into ``unfinished``); returns the series whose write was
        refused (their state moved since it was read)."""
        res = self.resolution
        keys = list(series)
        pipe = self._redis.pipeline(transaction=False)
        for name, sid in keys:
            pipe.hmget(keyspace.detector_state(name, res, sid), ["last", "det", "alerts"])
        states = pipe.execute()
        now = time.time() if swept is None else swept
        # What each series has to score, then every range read at once.
        todo: list[tuple[tuple[str, str], int, int, list[Any]]] = []
        for key, (raw_last, raw_det, raw_alerts) in zip(keys, states, strict=True):
            span = series[key]
            last = int(raw_last) if raw_last else None
            if last is not None:
                self._last[key] = last
            start = span.first if last is None else last + res
            if span.skip_gaps:
                start = max(start, span.end - MAX_BUCKETS * res)
            end = min(span.end, start + MAX_BUCKETS * res)
            if start < end:
                todo.append((key, start, end, [raw_last, raw_det, raw_alerts]))
        values = self._store.series_points(
            [
                (name, sid, start, (end - start) // res, "count" if name.startswith(EVENT_METRIC_PREFIX) else "avg")
                for (name, sid), start, end, _ in todo
            ],
            res,
        )
        writes = self._redis.pipeline(transaction=False)
        written: list[tuple[tuple[str, str], int, DetectionReport]] = []
        for ((name, sid), _start, end, (raw_last, raw_det, raw_alerts)), found_values in zip(todo, values, strict=True):
            span = series[(name, sid)]
            tags = span.tags
            detector = Detector.from_bytes(raw_det, self.config) if raw_det else Detector(self.config)
            points = self._points(name, found_values, begun=raw_last is not None, detector=detector)
            outcome = AlertOutcome()
            if self._alerts is not None and points:
                outcome = self._alerts.evaluate(name, sid, tags, points, raw_alerts)
            found = [p for p in points if p.score.alert]
            args: list[Any] = [
                raw_last.decode() if raw_last else "",
                end - res,
                detector.to_bytes(),
                outcome.state or "",
                orjson.dumps([name, sid]),
                # An idle metric series with nothing new leaves the sweep's
                # index; its next sample brings it back.
                "" if swept is not None and not points and not name.startswith(EVENT_METRIC_PREFIX) else int(now),
                end - self._keep,
                self.live_channel,
                len(found),
            ]
            for point in found:
                args += (point.bucket, orjson.dumps(_anomaly(name, tags, res, point)))
            args.append(len(outcome.notices))
            args += [orjson.dumps({"kind": "alert", **notice}) for notice in outcome.notices]
            self._advance(
                keys=[
                    keyspace.detector_state(name, res, sid),
                    keyspace.DETECTORS,
                    keyspace.anomalies(name),
                    keyspace.ALERT_OUTBOX,
                ],
                args=args,
                client=writes,
            )
            written.append(((name, sid), end - res, DetectionReport(len(points), len(found), len(outcome.notices))))
            if end < span.end:
                unfinished.append((name, sid))
        raced: list[tuple[str, str]] = []
        for (key, last, done), applied in zip(written, writes.execute(), strict=True):
            if int(applied):
                self._last[key] = last
                report += done
            else:
                self._last.pop(key, None)
                report.raced += 1
                raced.append(key)
        if len(self._last) > 100_000:
            self._last.clear()
        return raced

    def _points(self, name: str, values: list[list[Any]], *, begun: bool, detector: Detector) -> list[Point]:
        """Score ``values`` (``[bucket start, value or None]``, in order) with ``detector``."""
        counts = name.startswith(EVENT_METRIC_PREFIX)
        points: list[Point] = []
        for bucket, value in values:
            if value is None:
                if not (counts and begun):
                    continue  # no data: no point (a count's zeros start with its first event)
                value = 0
            begun = True
            points.append(Point(bucket, float(value), detector.update(float(bucket), float(value))))
        return points

    # -- reading -------------------------------------------------------------
    def anomalies(self, name: str, start: int, end: int, tags: Mapping[str, str]) -> list[dict[str, Any]]:
        """Anomalies of ``name`` with bucket start in [start, end) (epoch s)
        on series having all of ``tags``, oldest first."""
        found = []
        for raw in cast(list[bytes], self._redis.zrangebyscore(keyspace.anomalies(name), start, f"({end}")):
            item = orjson.loads(raw)
            item.pop("kind", None)
            if all(item["tags"].get(k) == v for k, v in tags.items()):
                found.append(item)
        return found


def anomaly_retention(settings: Settings) -> int:
    """Seconds anomalies are kept: as long as the rollup tier they are found in."""
    return int(settings.rollup_retention_days[TIERS.index(settings.anomaly_resolution)] * 86400)


def _anomaly(name: str, tags: Mapping[str, str], resolution: int, point: Point) -> dict[str, Any]:
    """The stored (and pushed) form of an anomaly: names, tags and numbers only."""
    score = point.score
    return {
        "kind": "anomaly",
        "name": name,
        "tags": dict(sorted(tags.items())),
        "bucket": point.bucket,
        "resolution": resolution,
        "value": point.value,
        "score": round(score.score, 4),
        "expected": score.expected,
        "lower": score.lower,
        "upper": score.upper,
    }


def _id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair ("" sorts first)."""
    if not entry_id:
        return (-1, -1)
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0))
