"""Erasure versus the pipeline: events still queued when their user is erased
are never stored. A private database, so the session worker stays out."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from analytics import AnalyticsService, Settings, keyspace
from analytics.redis_client import connect


@pytest.fixture
def quiet_service(redis_server, encryption_keys) -> Iterator[AnalyticsService]:
    """A service on database 2 without a worker: nothing is processed unless
    the test drains."""
    settings = Settings.from_env({"REDIS_URL": redis_server.url(2),
                                  "ANALYTICS_ENCRYPTION_KEYS": encryption_keys})
    client = connect(settings)
    client.flushdb()
    yield AnalyticsService(settings, client)
    client.flushdb()


def test_events_queued_before_erasure_are_dropped_at_commit(quiet_service) -> None:
    service = quiet_service
    user = "patient-queued-55aa"
    result = service.track_many([{"type": "click", "userId": user, "properties": {"n": i}}
                                 for i in range(4)] + [{"type": "click", "userId": "someone-else"}])
    assert result.accepted == 5 and service.queue.length() == 1

    report = service.erase_user(user, actor="test")
    assert report.records == 0  # nothing stored yet
    drained = service.drain("test-consumer", budget=5)
    assert drained.committed.erased == 4 and drained.committed.stored == 1
    assert service.queue.length() == 0  # the queue entry is gone too
    assert not service.redis.exists(keyspace.user_index(service.codec.user_hash(user)))

    # The user comes back after the erasure: new events are new data.
    service.track({"type": "click", "userId": user})
    drained = service.drain("test-consumer", budget=5)
    assert drained.committed.stored == 1 and drained.committed.erased == 0
    events, _ = service.get_events({"userId": user})
    assert len(events) == 1
