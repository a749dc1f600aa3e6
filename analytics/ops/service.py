"""The operations service: monitoring figures, retention cleanup and the
dead-letter store (listing, replay)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from analytics.errors import ValidationError
from analytics.metrics.schemas import check_name
from analytics.ops.replay import ReplayPlanner
from analytics.ops.retention import Cleanup, CleanupReport
from analytics.ops.stats import Stats
from analytics.pipeline.deadletters import KINDS as DLQ_KINDS
from analytics.pipeline.deadletters import DeadLetters
from analytics.pipeline.intake import Intake
from analytics.pipeline.queue import EventQueue
from analytics.privacy.audit import AuditLog
from analytics.redis_client import unavailable_as_error


@dataclass
class ReplayReport:
    """What a dead-letter replay did."""

    replayed: int = 0
    still_invalid: int = 0
    already_gone: int = 0
    ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "stillInvalid": self.still_invalid,
            "alreadyGone": self.already_gone,
            "ids": self.ids,
        }


class OpsService:
    def __init__(
        self,
        client: redis.Redis,
        stats: Stats,
        queue: EventQueue,
        dead_letters: DeadLetters,
        cleanup: Cleanup,
        planner: ReplayPlanner,
        intake: Intake,
        audit_log: AuditLog,
    ) -> None:
        self._redis = client
        self._stats = stats
        self._queue = queue
        self._dead_letters = dead_letters
        self._cleanup = cleanup
        self._planner = planner
        self._intake = intake
        self._audit_log = audit_log

    # -- figures -------------------------------------------------------------
    def stats_snapshot(self) -> dict[str, Any]:
        """The monitoring figures (never raises because Redis is away)."""
        return self._stats.snapshot(self._queue, self._dead_letters)

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    # -- retention -----------------------------------------------------------
    def cleanup(self, now: float | None = None, budget: float = 30.0) -> CleanupReport:
        """Remove expired events and rollup buckets (see :mod:`analytics.ops.retention`)."""
        with unavailable_as_error():
            return self._cleanup.run(now, budget)

    def cleanup_status(self) -> dict[str, Any]:
        """Last cleanup run: ``last_run``, ``duration``, ``removed``, ``runs``."""
        return self._cleanup.status()

    # -- dead letters ----------------------------------------------------------
    def dead_letter_list(self, kind: str = "events", start: str = "-", limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters of ``kind``, oldest first, without PHI: a record shows
        its id, type, messageId and priority, a metric sample its name (if
        valid); a sealed message stays sealed."""
        _check_kind(kind)
        with unavailable_as_error():
            items = self._dead_letters.entries(kind, start, limit)
        out = []
        for item in items:
            record = item.pop("record", None)
            sealed = item.pop("sealed", None)
            item.pop("user", None)
            if isinstance(record, dict) and kind == "metrics":
                # The name only, and only a well-formed one: the sample failed
                # a check, and its tags may never have been checked for PHI.
                name = record.get("n")
                valid = isinstance(name, str) and not check_name(name, ingest=False)
                item["metric"] = {"name": name if valid else None}
            elif isinstance(record, dict):
                item["event"] = {
                    k: record.get(v) for k, v in (("id", "i"), ("type", "t"), ("messageId", "m"), ("priority", "p"))
                }
            item["sealed"] = sealed is not None
            out.append(item)
        return out

    def replay_dead_letters(
        self, kind: str = "events", ids: Iterable[str] | None = None, limit: int = 1000, actor: str = "cli"
    ) -> ReplayReport:
        """Queue dead letters again (all of ``kind`` up to ``limit``, or ``ids``).

        Idempotent: records keep their id, so one already stored is not
        stored twice, and each dead letter is removed and re-queued in one
        step (two replays cannot both queue it). Sealed messages and metric
        samples are validated again; those still invalid stay in the store.
        """
        _check_kind(kind)
        plan = self._planner.for_kind(kind)
        report = ReplayReport()
        with unavailable_as_error():
            items: list[dict[str, Any] | None]
            if ids is None:
                items = list(self._dead_letters.entries(kind, "-", limit))
            else:
                items = [self._dead_letters.get(kind, i) for i in ids]
            for item in items:
                if item is None:
                    report.already_gone += 1
                    continue
                entry = plan(item)
                if entry is None:
                    report.still_invalid += 1
                    continue
                lane, fields = entry
                if self._dead_letters.requeue(kind, item["id"], lane, fields):
                    report.replayed += 1
                    report.ids.append(item["id"])
                else:
                    report.already_gone += 1
            self._audit_log.record(
                "dlq.replay", actor, kind=kind, count=report.replayed, still_invalid=report.still_invalid
            )
        if report.replayed:
            self._intake.kick()
        return report


def _check_kind(kind: str) -> None:
    if kind not in DLQ_KINDS:
        raise ValidationError("unknown dead-letter kind", {"kind": [f"One of: {', '.join(DLQ_KINDS)}."]})
