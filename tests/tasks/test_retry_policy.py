"""Tasks retry only when Redis is away, with backoff and jitter; never bad input."""

from __future__ import annotations

import redis

from analytics.errors import AnalyticsError, ValidationError
from analytics.events.commit import is_transient
from analytics.redis_client import TRANSIENT_ERRORS, store_error
from tasks.pipeline import process_events, recover


def test_tasks_retry_transient_redis_errors_only() -> None:
    for task in (process_events, recover):
        assert tuple(task.autoretry_for) == TRANSIENT_ERRORS
        assert task.retry_backoff and task.retry_jitter and task.acks_late
        for bad_input in (ValidationError, AnalyticsError, redis.ResponseError, ValueError):
            assert not issubclass(bad_input, tuple(task.autoretry_for))


def test_redis_failures_are_classified_once() -> None:
    assert is_transient(redis.ConnectionError("down"))
    full_memory = "command not allowed when used memory > 'maxmemory'."
    assert is_transient(redis.exceptions.OutOfMemoryError(full_memory))
    assert not is_transient(redis.ResponseError("WRONGTYPE Operation against a key"))
    full = store_error(redis.exceptions.OutOfMemoryError("command not allowed"))
    assert full is not None and full.status == 503 and "full" in full.message
    assert store_error(redis.ResponseError("WRONGTYPE")) is None
