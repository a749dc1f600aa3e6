"""A work-around for crashes of the Celery 5.7 worker on a Redis outage.

When the broker connection drops, Celery closes the connection, which
detaches kombu's Redis channels from their transport. Two paths then still
use such a detached channel, and fail with ``AttributeError: 'NoneType'
object has no attribute 'hostname'`` (or ``'client'``):

* closing the channel restores the unacknowledged task messages;
* a task that finished during the outage is acknowledged or rejected on the
  channel it came from, after the worker has reconnected on a new one.

``AttributeError`` is not a connection error, so it escapes and the worker
exits ("Unrecoverable error") instead of reconnecting. Seen with celery 5.7.0
and kombu 5.7.0 in ``tests/tasks/test_faults.py`` (about one run in four).

The fix: a detached channel raises redis's ``ConnectionError`` when asked for
its connection parameters, which every one of those callers already handles
as "the broker is away". Nothing is lost: the message stays in kombu's unacked
hash in Redis and is redelivered after ``visibility_timeout`` (and the events
never depended on it: they wait in the queue stream for the recovery sweep).
Remove this module when kombu handles it (run the Redis restart test a few
times without it).
"""

from __future__ import annotations

import functools
from typing import Any

import redis
from kombu.transport import redis as kombu_redis


def install() -> None:
    original = kombu_redis.Channel._connparams
    if getattr(original, "_analytics_patched", False):
        return

    @functools.wraps(original)
    def _connparams(self: Any, *args: Any, **kwargs: Any) -> Any:
        transport = self.connection
        if transport is None or getattr(transport, "client", None) is None:
            raise redis.exceptions.ConnectionError("broker channel already closed")
        return original(self, *args, **kwargs)

    _connparams._analytics_patched = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
