"""One decorator for every task, so the defaults are fixed in one place
(a misspelled option such as ``ignore_results`` would silently do nothing),
and the per-process :class:`AnalyticsService`."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import shared_task

from analytics import AnalyticsService
from analytics.redis_client import TRANSIENT_ERRORS, wait_until_reachable
from tasks.celery_app import PROCESS_EVENTS

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def task(name: str) -> Callable[[F], Any]:
    """Declare a task: stable name, late ack, retried only on Redis outages."""
    return shared_task(
        name=name,
        acks_late=True,
        ignore_result=True,
        autoretry_for=TRANSIENT_ERRORS,
        retry_backoff=True,
        retry_backoff_max=30,
        retry_jitter=True,
        max_retries=None,
    )


def _send_process_task() -> None:
    from tasks.celery_app import app

    app.send_task(PROCESS_EVENTS)


@functools.cache
def service() -> AnalyticsService:
    """The service of this worker process (built on first use)."""
    svc = AnalyticsService.create(kick=_send_process_task)
    wait_until_reachable(svc.redis, "worker")
    return svc
