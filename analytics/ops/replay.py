"""Dead-letter replay planning: where a dead letter goes back, validated
again under the current settings (an event type registered since, a fixed
sample...), or None while it is still invalid."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson

from analytics.errors import ValidationError
from analytics.events.records import record_problem
from analytics.events.segment import SegmentIngest
from analytics.events.service import EventService
from analytics.metrics.service import MetricService
from analytics.pipeline.admission import StreamEntry
from analytics.pipeline.deadletters import DeadLetters

log = logging.getLogger(__name__)

#: A dead letter -> the queue entry (lane, fields) it goes back as, or None
#: while it is still invalid. The fields are encoded by the queue that reads
#: the lane (packed queue items for events, a JSON array for metric samples),
#: so the planner, which knows the kind, chooses the encoding.
Replayer = Callable[[dict[str, Any]], StreamEntry | None]

#: Metric queue record field -> sample field as clients send it.
_SAMPLE_FIELDS = (("n", "name"), ("v", "value"), ("g", "tags"), ("ts", "timestamp"))


class ReplayPlanner:
    def __init__(
        self, events: EventService, metrics: MetricService, segment: SegmentIngest, dead_letters: DeadLetters
    ) -> None:
        self._events = events
        self._metrics = metrics
        self._segment = segment
        self._dead_letters = dead_letters

    def for_kind(self, kind: str) -> Replayer:
        """The planner of dead letters of ``kind`` (``events``, ``segment``, ``metrics``)."""
        return {"events": self.event, "segment": self.segment, "metrics": self.metric}[kind]

    def event(self, item: dict[str, Any]) -> StreamEntry | None:
        """Where an event dead letter goes back: a record is checked again; a
        sealed raw message is opened and validated again like new input."""
        if "record" in item:
            records = [item["record"]]
        elif "sealed" in item:
            try:
                records = self._events.records(orjson.loads(self._dead_letters.open_sealed(item)))
            except (ValueError, ValidationError) as exc:  # orjson.JSONDecodeError is a ValueError
                log.info("dead letter %s is still invalid (%s)", item["id"], type(exc).__name__)
                return None
        else:
            return None
        if not records or any(record_problem(r) is not None for r in records):
            return None
        return self._events.replay_entry(records)

    def segment(self, item: dict[str, Any]) -> StreamEntry | None:
        """A Segment message set aside at ingestion, mapped and validated again
        under the current settings (an event type registered since, say)."""
        if "sealed" not in item:
            return self.event(item)
        try:
            event, sent_at = self._segment.remap(orjson.loads(self._dead_letters.open_sealed(item)))
            records = self._events.records(event, sent_at)
        except (ValueError, ValidationError) as exc:
            log.info("dead letter %s is still invalid (%s)", item["id"], type(exc).__name__)
            return None
        if any(record_problem(r) is not None for r in records):
            return None
        return self._events.replay_entry(records)

    def metric(self, item: dict[str, Any]) -> StreamEntry | None:
        """Where a metric dead letter goes back: its sample is validated again
        like new input under the current settings (the schema, PHI tag keys,
        the series limit of its metric) and queued on the metrics queue.

        Counted once: the commit sets aside only samples it left out of the
        rollups, a replay moves the dead letter to the queue in one step
        (:meth:`DeadLetters.requeue`), and the commit counts a queue entry
        once. Samples keep no id once counted (that would cost a set member
        per sample), so a dead letter added by hand for a sample that was
        in fact counted would be counted again.
        """
        record = item.get("record")
        if not isinstance(record, dict):
            return None  # sealed or unreadable: the commit sets samples aside as records
        raw = {wire: record[short] for short, wire in _SAMPLE_FIELDS if short in record}
        ts = raw.get("timestamp")
        if isinstance(ts, (int, float)) and not isinstance(ts, bool):
            # Queued in ms, sent in epoch seconds. The float division may
            # move it by under 1 ms, never into another second (the finest
            # unit a bucket starts on).
            raw["timestamp"] = ts / 1000
        # A sample queued without a time (by an older writer) is counted when
        # it was set aside, the closest known time to its arrival.
        prepared = self._metrics.prepare([raw], received_ms=int(item["ts"] * 1000))
        records = self._metrics.register_series(prepared)
        if not records:
            log.info(
                "dead letter %s is still invalid (%s)",
                item["id"],
                ", ".join(sorted(prepared.result.rejected[0]["errors"])),
            )
            return None
        return self._metrics.entry(records)
