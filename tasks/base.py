"""One decorator for every task, so the defaults are fixed in one place
(a misspelled option such as ``ignore_results`` would silently do nothing),
and the per-process :class:`Analytics`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import current_app, shared_task

from analytics import Analytics
from analytics.redis_client import TRANSIENT_ERRORS, wait_until_reachable
from tasks.celery_app import alert_wakeup, wakeup

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


@functools.cache
def analytics() -> Analytics:
    """The services of this worker process (built on first use)."""
    app = Analytics.create(kick=wakeup(current_app), notify=alert_wakeup(current_app))
    wait_until_reachable(app.redis, "worker")
    return app
