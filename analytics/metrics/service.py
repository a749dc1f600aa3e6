"""The metrics service: ingest of samples (validated, series registered
under the cardinality limit, queued) and queries of the rollups."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import marshmallow

from analytics import keyspace
from analytics.anomaly.live import LiveDetection
from analytics.errors import ValidationError
from analytics.events.service import EventService, TrackResult
from analytics.metrics.fastpath import load_sample
from analytics.metrics.forecasting import forecast_metric
from analytics.metrics.schemas import (
    EVENT_METRIC_PREFIX,
    MetricSampleSchema,
    check_name,
    metric_anomaly_schema,
    metric_query_schema,
)
from analytics.metrics.store import EMPTY_SERIES, MetricStore, auto_bucket, bucket_range, series_id
from analytics.pipeline.admission import StreamEntry
from analytics.pipeline.intake import Intake
from analytics.pipeline.queue import EventQueue
from analytics.privacy.apikeys import ApiKey, KeyForbidden
from analytics.redis_client import unavailable_as_error
from analytics.settings import Settings


@dataclass
class PreparedMetrics:
    """Metric samples validated, not queued yet (:meth:`MetricService.prepare`)."""

    #: Rejections by index (accepted and ids once queued).
    result: TrackResult
    #: The valid samples: (index, queue record, series id).
    valid: list[tuple[int, dict[str, Any], str]] = field(default_factory=list)
    #: (metric, series id) -> tags of every valid sample.
    series: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


class MetricService:
    def __init__(
        self,
        settings: Settings,
        store: MetricStore,
        queue: EventQueue,
        intake: Intake,
        events: EventService,
        phi_fields: Iterable[str],
        detection: LiveDetection,
    ) -> None:
        self._settings = settings
        self._store = store
        self._queue = queue
        self._intake = intake
        self._events = events
        self._detection = detection
        self._phi_fields = frozenset(phi_fields)
        self._schema = MetricSampleSchema(phi_fields=self._phi_fields)

    # -- ingest --------------------------------------------------------------
    def track_metric(
        self, name: str, value: float, tags: dict[str, str] | None = None, timestamp: Any = None
    ) -> TrackResult:
        """Validate and durably queue one metric sample."""
        sample: dict[str, Any] = {"name": name, "value": value, "tags": tags or {}}
        if timestamp is not None:
            sample["timestamp"] = timestamp
        return self.track_metrics([sample])

    def track_metrics(self, samples: Iterable[Any], *, received_ms: int | None = None) -> TrackResult:
        """Validate samples one by one and queue the valid ones as one entry.

        Invalid samples (and samples that would add a series to a metric at
        its cardinality limit) are reported by index. Raises
        :class:`StoreUnavailable` when Redis cannot take them.
        """
        return self._queue_prepared(self.prepare(samples, received_ms=received_ms))

    def prepare(self, samples: Iterable[Any], *, received_ms: int | None = None) -> PreparedMetrics:
        """Validate ``samples`` without queueing them (no I/O)."""
        received = received_ms if received_ms is not None else int(time.time() * 1000)
        prepared = PreparedMetrics(TrackResult())
        for index, raw in enumerate(samples):
            if not isinstance(raw, dict):
                prepared.result.rejected.append(
                    {"index": index, "errors": {"_schema": ["A sample must be a JSON object."]}}
                )
                continue
            sample = load_sample(raw, self._phi_fields)
            if sample is None:  # invalid (or unusual): the schema of record decides and explains
                try:
                    sample = self._schema.load(raw)
                except marshmallow.ValidationError as exc:
                    prepared.result.rejected.append({"index": index, "errors": exc.normalized_messages()})
                    continue
            tags = dict(sorted(sample["tags"].items()))
            sid = series_id(tags)
            prepared.series[(sample["name"], sid)] = tags
            ts = sample["timestamp"] if sample["timestamp"] is not None else received
            prepared.valid.append((index, {"n": sample["name"], "v": sample["value"], "g": tags, "ts": ts}, sid))
        return prepared

    def track_as(
        self,
        secret: str | None,
        prepared: PreparedMetrics,
        *,
        action: str = "ingest",
        where: str = "",
        remote: str | None = None,
    ) -> tuple[ApiKey, TrackResult]:
        """Authenticate ``secret`` for ``action`` and queue ``prepared``, with
        the answers of :meth:`Intake.admit`: one Redis round trip when this
        process knows every series of the samples as registered. A new series
        must be registered under the cardinality limit first, a write that
        waits for the key: then the general path (key, registration, queue)."""
        if prepared.valid and self._store.all_known(prepared.series):
            records = [record for _, record, _ in prepared.valid]
            key, ids = self._intake.admit(secret, [self.entry(records)], action=action, where=where, remote=remote)
            return key, _accepted(prepared.result, records, ids)
        key = self._intake.authorize(secret, action, where=where, remote=remote)
        return key, self._queue_prepared(prepared)

    def _queue_prepared(self, prepared: PreparedMetrics) -> TrackResult:
        """Register the series of ``prepared`` and queue its samples (two
        round trips, one when every series is known)."""
        records = self.register_series(prepared)
        if not records:
            return prepared.result
        ids = self._intake.write([self.entry(records)])
        return _accepted(prepared.result, records, ids)

    def entry(self, records: list[dict[str, Any]]) -> StreamEntry:
        """The metrics queue entry holding ``records``."""
        return keyspace.METRICS_QUEUE, self._queue.fields(records)

    def register_series(self, prepared: PreparedMetrics) -> list[dict[str, Any]]:
        """Register the series of ``prepared`` under the cardinality limit
        and return the queue records of the samples whose series fit; the
        others join ``prepared.result.rejected`` (by index). What a new
        sample and a replayed metric dead letter both go through. Raises
        :class:`StoreUnavailable` when Redis is away."""
        result = prepared.result
        if not prepared.valid:
            return []
        with unavailable_as_error():
            full = self._store.register(prepared.series)
        records = []
        for index, record, sid in prepared.valid:
            if (record["n"], sid) in full:
                result.rejected.append(
                    {
                        "index": index,
                        "errors": {
                            "tags": [
                                f"Metric {record['n']!r} has reached its limit of "
                                f"{self._settings.max_series_per_metric} series (tag combinations). Tags are "
                                "not ids: keep unbounded values (user ids, request ids, timestamps) out of tags."
                            ]
                        },
                    }
                )
            else:
                records.append(record)
        result.rejected.sort(key=lambda r: r["index"])
        return records

    # -- queries -------------------------------------------------------------
    def get_metric(
        self, name: str, query: dict[str, Any], *, now_ms: int | None = None, scoped: bool = False
    ) -> dict[str, Any]:
        """The ``GET /v1/metrics/{name}`` answer for ``query`` (raw strings
        or loaded values). A tag combination never written gives no series.

        ``scoped`` (a user-scoped key): only the aggregate over every series
        of the metric. Tag values may be per user whatever their key is
        called (``user``, ``patient``, ``acct``...), so such a key may
        neither group by a tag (it would list other users' values) nor
        filter on one (a probe of whether a value exists): both are a 403.
        """
        try:
            params = metric_query_schema.load(query)
        except marshmallow.ValidationError as exc:
            raise ValidationError("invalid query", exc.normalized_messages()) from None
        if scoped and (params["groupBy"] is not None or params["tags"]):
            raise KeyForbidden("a user-scoped key may not group or filter metrics by tag", "unscoped read")
        event_type = name[len(EVENT_METRIC_PREFIX) :] if name.startswith(EVENT_METRIC_PREFIX) else None
        if event_type is None:
            problems = check_name(name, ingest=False)
            if problems:
                raise ValidationError("invalid metric name", {"name": problems})
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        end = params["end"] if params["end"] is not None else now
        start = params["start"] if params["start"] is not None else end - 3_600_000
        if start >= end:
            raise ValidationError("invalid query", {"start": ["Must be before end."]})
        bucket = params["bucket"] or auto_bucket((end - start) / 1000)
        filter_tags = params["tags"]
        bucket_range(start, end, bucket)  # refuse too many points before any work
        series: dict[str, dict[str, str]]
        with unavailable_as_error():
            if event_type is not None:
                # One series without tags, there even before the first event.
                known = self._events.known_type(event_type)
                series = {EMPTY_SERIES: {}} if known and not filter_tags else {}
            else:
                series = self._store.series(name, filter_tags)
            found = self._store.query(
                name,
                series,
                start_ms=start,
                end_ms=end,
                bucket=bucket,
                agg=params["agg"],
                filter_tags=filter_tags,
                group_by=params["groupBy"],
            )
        return {"name": name, "series": found}

    def forecast(
        self, name: str, query: dict[str, Any], *, now_ms: int | None = None, scoped: bool = False
    ) -> dict[str, Any]:
        """The ``GET /v1/metrics/{name}/forecast`` answer for ``query`` (raw
        strings): the history is read by :meth:`get_metric`, with its rules
        (a user-scoped key neither groups nor filters by tag), see
        :func:`analytics.metrics.forecasting.forecast_metric`."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        return forecast_metric(
            name, query, lambda history: self.get_metric(name, history, now_ms=now, scoped=scoped), now_ms=now
        )

    def anomalies(
        self, name: str, query: dict[str, Any], *, now_ms: int | None = None, scoped: bool = False
    ) -> dict[str, Any]:
        """The ``GET /v1/metrics/{name}/anomalies`` answer for ``query`` (raw
        strings): the anomalies live detection found on the metric's series
        (:mod:`analytics.anomaly.live`), each with its score and expected
        band. Per series by nature, so a user-scoped key may not read them
        (tag values may be per user, as for ``groupBy``)."""
        if scoped:
            raise KeyForbidden("a user-scoped key may not read per-series anomalies", "unscoped read")
        try:
            params = metric_anomaly_schema.load(query)
        except marshmallow.ValidationError as exc:
            raise ValidationError("invalid query", exc.normalized_messages()) from None
        if not name.startswith(EVENT_METRIC_PREFIX):
            problems = check_name(name, ingest=False)
            if problems:
                raise ValidationError("invalid metric name", {"name": problems})
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        end = params["end"] if params["end"] is not None else now
        start = params["start"] if params["start"] is not None else end - 86_400_000
        if start >= end:
            raise ValidationError("invalid query", {"start": ["Must be before end."]})
        with unavailable_as_error():
            found = self._detection.anomalies(name, start // 1000, -(-end // 1000), params["tags"])
        return {"name": name, "resolution": self._detection.resolution, "anomalies": found}


def _accepted(result: TrackResult, records: list[dict[str, Any]], entry_ids: tuple[str, ...]) -> TrackResult:
    """``result`` with the samples of ``records`` accepted as one entry."""
    if records:
        result.ids = [f"{entry_ids[0]}:{k}" for k in range(len(records))]
        result.accepted = len(records)
    return result
