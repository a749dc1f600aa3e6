"""Beat under a lock: as many beats as you like, one sends.

Celery's beat sends every periodic task from each beat process that runs,
so two beats (a standby, a doubled deployment) would send everything twice.
:class:`LockedScheduler` is beat's default scheduler with a lease in the
data store (:class:`analytics.lease.Lease`, ``analytics:lock:beat``),
checked at every tick, as celery-redbeat does with its own lock: the beat
holding it renews it and sends what is due; any other beat sends nothing
and tries again every third of the lease, taking over once the holder has
stopped renewing (killed, partitioned) for ``ANALYTICS_BEAT_LOCK_SECONDS``.
A beat that stops cleanly gives the lease back at once. The lease lives in
Redis (``REDIS_URL``), not in the broker, so it works with either broker.

Each periodic task sent is counted per holder in ``analytics:stats:beat``.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.beat import PersistentScheduler

from analytics import keyspace
from analytics.lease import Lease
from analytics.outage import OutageLog
from analytics.redis_client import connect, store_error
from analytics.settings import Settings

log = logging.getLogger(__name__)


class LockedScheduler(PersistentScheduler):
    """``PersistentScheduler`` that sends only while it holds beat's lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = Settings.from_env()
        self._redis = connect(settings)
        self._lease = Lease(self._redis, keyspace.BEAT_LOCK, settings.beat_lock_seconds)
        self._outage = OutageLog("beat")
        self._holding = False
        super().__init__(*args, **kwargs)
        # Renew well within the lease's life, however far apart the tasks are.
        self._standby_seconds = settings.beat_lock_seconds / 3
        self.max_interval = min(float(self.max_interval), self._standby_seconds)  # type: ignore[has-type]

    def _hold(self) -> bool:
        try:
            holding = self._lease.hold()
        except redis.RedisError as exc:
            if store_error(exc) is None:
                raise
            self._outage.went_down(type(exc).__name__)
            holding = False
        else:
            self._outage.came_back()
        if holding != self._holding:
            self._holding = holding
            if holding:
                log.info("beat: holding the beat lock (%s): sending the periodic tasks", self._lease.holder)
            else:
                log.info("beat: another beat holds the beat lock; standing by")
        return holding

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._hold():
            return self._standby_seconds
        return float(super().tick(*args, **kwargs))

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        result = super().apply_async(entry, producer, advance, **kwargs)
        try:
            self._redis.hincrby(keyspace.BEAT_STATS, self._lease.holder, 1)
        except redis.RedisError:
            pass  # a figure only; an outage is reported by _hold
        return result

    def close(self) -> None:
        super().close()
        try:
            self._lease.release()
        except redis.RedisError:
            pass  # it expires by itself
        self._redis.close()
