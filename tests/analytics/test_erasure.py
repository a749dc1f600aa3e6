"""Erasure versus the pipeline: events still queued when their user (or an
anonymous id linked to the user) is erased are never stored; the linked
anonymous ids' own events and dead letters, and nobody else's; a run
interrupted and run again. A private database, so the session worker stays
out."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
import redis

from analytics import Analytics, Settings, keyspace
from analytics.errors import AnalyticsError
from analytics.events import records
from analytics.events.schemas import format_time_ms
from analytics.redis_client import connect


@pytest.fixture
def quiet_service(redis_server, encryption_keys) -> Iterator[Analytics]:
    """A service on database 2 without a worker: nothing is processed unless
    the test drains."""
    settings = Settings.from_env({"REDIS_URL": redis_server.url(2), "ANALYTICS_ENCRYPTION_KEYS": encryption_keys})
    client = connect(settings)
    client.flushdb()
    yield Analytics(settings, client)
    client.flushdb()


def test_events_queued_before_erasure_are_dropped_at_commit(quiet_service) -> None:
    service = quiet_service
    user = "patient-queued-55aa"
    result = service.events.track_many(
        [{"type": "click", "userId": user, "properties": {"n": i}} for i in range(4)]
        + [{"type": "click", "userId": "someone-else"}]
    )
    assert result.accepted == 5 and service.queue.length() == 1

    report = service.privacy.erase_user(user, actor="test")
    assert report.records == 0  # nothing stored yet
    drained = service.processor.drain("test-consumer", budget=5)
    assert drained.committed.erased == 4 and drained.committed.stored == 1
    assert service.queue.length() == 0  # the queue entry is gone too
    assert not service.redis.exists(keyspace.user_index(service.codec.user_hash(user)))

    # The user comes back after the erasure: new events are new data.
    service.events.track({"type": "click", "userId": user})
    drained = service.processor.drain("test-consumer", budget=5)
    assert drained.committed.stored == 1 and drained.committed.erased == 0
    events, _ = service.events.get_events({"userId": user})
    assert len(events) == 1


USER, VISITOR = "patient-linked-3c1d", "device-anon-77b2"


def stored_ids(service: Analytics) -> list[str]:
    events, _ = service.events.get_events({"limit": 1000})
    return sorted(e["messageId"] for e in events)


def test_anonymous_events_of_a_linked_anonymous_id_still_queued_are_dropped_at_commit(quiet_service) -> None:
    service = quiet_service
    service.events.track({"type": "login", "userId": USER, "anonymousId": VISITOR, "messageId": "link"})
    service.processor.drain("test-consumer", budget=5)
    # The visitor's events (a second tab, say) wait in the queue...
    service.events.track_many(
        [{"type": "page_view", "anonymousId": VISITOR, "messageId": f"q{i}"} for i in range(3)]
        + [{"type": "page_view", "anonymousId": "someone"}]
    )
    report = service.privacy.erase_user(USER, actor="test")  # ...while the user is erased
    assert report.records == 1
    drained = service.processor.drain("test-consumer", budget=5)
    assert drained.committed.erased == 3 and drained.committed.stored == 1
    assert service.queue.length() == 0
    assert not service.redis.exists(keyspace.user_index(service.codec.user_hash(VISITOR)))
    # The visitor comes back after the erasure: new data.
    time.sleep(0.01)  # after the tombstone (ms)
    service.events.track({"type": "page_view", "anonymousId": VISITOR, "messageId": "q0"})
    assert service.processor.drain("test-consumer", budget=5).committed.stored == 1


def test_a_linked_anonymous_id_takes_only_its_anonymous_only_events(quiet_service) -> None:
    """Another user carrying the same anonymous id (a shared device) keeps
    their events, and so does a user whose userId is the anonymous id's
    string (indexed under the same hash); pages shared by all of them are
    rewritten, several of them."""
    service = quiet_service
    service.store.page_bytes = 400  # a few records per page
    shared = [{"type": "page_view", "anonymousId": VISITOR, "messageId": f"anon-{i}"} for i in range(6)] + [
        {"type": "login", "userId": USER, "anonymousId": VISITOR, "messageId": "link"},
        {"type": "login", "userId": "sibling", "anonymousId": VISITOR, "messageId": "sibling"},
        {"type": "page_view", "userId": VISITOR, "messageId": "same-string-0"},
        {"type": "page_view", "userId": VISITOR, "messageId": "same-string-1"},
        {"type": "page_view", "anonymousId": "unrelated", "messageId": "unrelated"},
    ]
    # interleaved in time, so that pages mix them
    for n, event in enumerate(sorted(shared, key=lambda e: e["messageId"][::-1])):
        event["timestamp"] = format_time_ms(1_790_000_000_000 + n)
    assert service.events.track_many(shared).accepted == len(shared)
    assert service.processor.drain("test-consumer", budget=5).committed.stored == len(shared)
    visitor_index = keyspace.user_index(service.codec.user_hash(VISITOR))
    assert service.redis.zcard(visitor_index) > 1

    report = service.privacy.erase_user(USER, actor="test")
    assert report.records == 1 + 6
    assert stored_ids(service) == ["same-string-0", "same-string-1", "sibling", "unrelated"]
    mine, _ = service.events.get_events({"userId": VISITOR})
    assert sorted(e["messageId"] for e in mine) == ["same-string-0", "same-string-1"]
    # the index still lists exactly the pages holding the same-string user's records
    pages = {m.decode() for m in service.redis.zrange(visitor_index, 0, -1)}
    assert pages and pages == {f"page_view:{page_id}" for page_id in pages_of(service, VISITOR)}
    sibling, _ = service.events.get_events({"userId": "sibling"})
    assert [e["anonymousId"] for e in sibling] == [VISITOR]


def pages_of(service: Analytics, user_id: str) -> set[str]:

    user = service.codec.user_hash(user_id)
    return {
        page_id.decode()
        for page_id, page in service.redis.hgetall(keyspace.processed("page_view")).items()
        if any(records.blob_user(f) == user for f in records.iter_blobs(page))
    }


def test_an_anonymous_only_dead_letter_of_a_linked_anonymous_id_is_erased(quiet_service) -> None:
    service = quiet_service
    service.events.track({"type": "login", "userId": USER, "anonymousId": VISITOR, "messageId": "link"})
    service.processor.drain("test-consumer", budget=5)
    # Records of an older queue entry, one invalid (set aside as a dead letter
    # keyed by its owner): the visitor's and a stranger's.
    bad = [
        {
            **service.codec.encode(
                {"type": "click", "anonymousId": anonymous, "messageId": m}, "normal", 1_700_000_000_000, None
            ),
            "ts": "not-a-time",
        }
        for anonymous, m in ((VISITOR, "bad-1"), ("stranger", "bad-2"))
    ]
    service.redis.xadd(keyspace.EVENT_QUEUE, {"e": orjson.dumps(bad)})
    assert service.processor.drain("test-consumer", budget=5).committed.dead_lettered == 2

    report = service.privacy.erase_user(USER, actor="test")
    assert (report.records, report.deadLetters) == (1, 1)
    [left] = service.dead_letters.entries("events")
    assert left["record"]["i"] == service.vault.event_id("bad-2")  # the messageId itself is sealed
    assert left["user"] == service.codec.user_hash("stranger")


def test_an_interrupted_erasure_run_again_still_finds_the_links(quiet_service, monkeypatch) -> None:
    service = quiet_service
    service.events.track_many(
        [
            {"type": "page_view", "anonymousId": VISITOR, "messageId": "anon"},
            {"type": "login", "userId": USER, "anonymousId": VISITOR, "messageId": "link"},
        ]
    )
    service.processor.drain("test-consumer", budget=5)
    visitor_hash = service.codec.user_hash(VISITOR)
    tombstone = service.eraser.tombstone

    def redis_gone_at_the_visitor(owner: str) -> int:
        if owner == visitor_hash:
            raise redis.ConnectionError("Redis went away")
        return tombstone(owner)

    monkeypatch.setattr(service.eraser, "tombstone", redis_gone_at_the_visitor)
    with pytest.raises(AnalyticsError):
        service.privacy.erase_user(USER, actor="test")
    assert stored_ids(service) == ["anon"]  # the user's record went, the link with it

    monkeypatch.undo()
    report = service.privacy.erase_user(USER, actor="test")
    assert report.records == 1 and stored_ids(service) == []
    assert not service.redis.exists(keyspace.erasure_links(service.codec.user_hash(USER)))
