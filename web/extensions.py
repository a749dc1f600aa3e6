"""Per-app objects: the :class:`AnalyticsService` and the Celery client used
to wake the workers. Both live in ``app.extensions``."""
from __future__ import annotations

import logging

from flask import Flask, current_app

from analytics import AnalyticsService
from analytics.redis_client import connect
from analytics.settings import Settings

log = logging.getLogger(__name__)


def init_app(app: Flask, settings: Settings) -> None:
    from tasks.celery_app import PROCESS_EVENTS, create_celery_app

    celery = create_celery_app(settings)

    def kick() -> None:
        # The events are already durable in the queue; if the wake-up fails,
        # the beat recovery sweep starts processing instead. Never fail the
        # request for it.
        try:
            celery.send_task(PROCESS_EVENTS, retry=False)
        except Exception as exc:  # noqa: BLE001 - any broker failure is non-fatal here
            log.warning("could not queue a processing task (%s); recovery sweep will", type(exc).__name__)

    app.extensions["celery"] = celery
    app.extensions["analytics"] = AnalyticsService(settings, connect(settings), kick=kick)


def get_service() -> AnalyticsService:
    return current_app.extensions["analytics"]
