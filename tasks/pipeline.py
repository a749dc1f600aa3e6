"""Processing tasks: thin, idempotent (the store dedupes), retried only when
Redis is away."""

from __future__ import annotations

import logging
from typing import Any

from tasks.base import analytics, task
from tasks.celery_app import PROCESS_EVENTS, RECOVER

log = logging.getLogger(__name__)


@task(PROCESS_EVENTS)
def process_events() -> dict[str, Any]:
    """Drain the event queue for a few seconds (queued on ingest)."""
    report = analytics().processor.drain()
    if report.claimed:
        log.warning("took over %d queue entries left by stopped workers", report.claimed)
    return {"entries": report.entries, "stored": report.committed.stored, "metric_samples": report.metrics.samples}


@task(RECOVER)
def recover() -> dict[str, Any]:
    """Beat: take over work of dead workers; wake processing if needed."""
    report = analytics().processor.recover()
    if report.claimed:
        log.warning("recovered %d queue entries left by stopped workers", report.claimed)
    return {"entries": report.entries, "stored": report.committed.stored}
