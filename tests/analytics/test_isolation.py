"""Poison isolation and the dead-letter store, with real Redis."""

from __future__ import annotations

import orjson
import pytest

from analytics import keyspace
from analytics.errors import ValidationError
from analytics.events.commit import record_problem
from analytics.pipeline.deadletters import dlq_key
from testkit import records_in, stored_events


@pytest.fixture
def idle(make_stack):
    """A service on a private Redis that no worker reads (the session worker
    may be running): the test plays the worker. Yields (service, data)."""
    stack = make_stack()
    return stack.app().extensions["analytics"], stack.redis.client(0)


def records_of(service, events):
    """Records as the ingestion side builds them (PHI sealed)."""
    return [
        service.codec.encode(e, "normal", 1_700_000_000_000, None)
        for e in (
            dict(
                e,
                timestamp=None,
                priority=None,
                anonymousId=None,
                properties=None,
                context=None,
                traits=None,
                metadata=None,
            )
            for e in events
        )
    ]


def test_record_problem_names_the_field_never_the_value() -> None:
    good = {"i": "x", "m": "m", "t": "click", "p": "normal", "ts": 1, "rt": 1, "u": "", "a": ""}
    assert record_problem(good) is None
    assert record_problem({**good, "ts": "soon"}) == "field 'ts' missing or not an integer"
    assert record_problem({**good, "p": "urgent"}) == "field 'p' not a priority"
    assert record_problem(["not", "a", "record"]) == "not an object"


def test_an_invalid_record_is_dead_lettered_and_its_batch_stored(idle) -> None:
    service, data = idle
    good = records_of(service, [{"type": "click", "userId": f"u{i}", "messageId": f"g{i}"} for i in range(3)])
    bad = {**good[0], "i": "other-id", "m": "bad-1", "ts": "not-a-time"}
    data.xadd(keyspace.EVENT_QUEUE, {"e": orjson.dumps([good[0], bad, good[1]])})
    data.xadd(keyspace.EVENT_QUEUE, {"e": orjson.dumps([good[2]])})
    report = service.processor.drain("c1")
    assert report.committed.stored == 3 and report.committed.dead_lettered == 1
    assert stored_events(data) == 3
    assert service.queue.pending() == 0 and service.queue.length() == 0
    [letter] = service.ops.dead_letter_list("events")
    assert letter["reason"] == "invalid_record" and letter["attempts"] == 1
    assert letter["event"]["messageId"] == "bad-1" and letter["sealed"] is False


def test_a_malformed_entry_is_dead_lettered_sealed_without_blocking_others(idle) -> None:
    service, data = idle
    data.xadd(keyspace.EVENT_QUEUE, {"e": b"{not json"})
    service.events.track({"type": "click", "userId": "u1"})
    report = service.processor.drain("c1")
    assert report.committed.stored == 1 and report.committed.dead_lettered == 1
    [letter] = service.ops.dead_letter_list("events")
    assert letter["reason"] == "malformed_entry" and letter["sealed"] is True
    raw = service.dead_letters.entries("events")[0]
    assert service.dead_letters.open_sealed(raw) == b"{not json"
    # Replay validates it again: still invalid, so it stays.
    replay = service.ops.replay_dead_letters("events", actor="test")
    assert (replay.replayed, replay.still_invalid) == (0, 1)
    assert service.dead_letters.length("events") == 1


def test_a_record_that_makes_the_commit_fail_is_isolated_then_replayed(idle) -> None:
    service, data = idle
    service.events.register_event_type("fragile")
    # A record of type "fragile" now makes the commit script fail (WRONGTYPE).
    data.set(keyspace.processed("fragile"), "not a hash")
    batch = [
        {"type": "click", "userId": "u1", "messageId": "a"},
        {"type": "fragile", "userId": "u1", "messageId": "poison"},
        {"type": "click", "userId": "u2", "messageId": "b"},
    ]
    service.events.track_many(batch)
    service.events.track({"type": "login", "userId": "u3", "messageId": "c"})  # another entry
    report = service.processor.drain("c1")
    assert report.committed.dead_lettered == 1 and report.failed == 0
    assert stored_events(data) == 3
    assert len(records_in(data, "click")) == 2 and len(records_in(data, "login")) == 1
    assert service.queue.pending() == 0
    [letter] = service.ops.dead_letter_list("events")
    assert letter["reason"] == "processing_error"
    # A client's messageId is sealed: the listing shows its keyed hash (the id).
    assert letter["event"]["type"] == "fragile" and letter["event"]["messageId"] == service.vault.event_id("poison")
    figures = service.ops.stats_snapshot()
    assert figures["queue"]["last_minute"]["dead"] == 1
    assert figures["queue"]["dead_letters"]["events"] == 1

    # Fixed: the replay stores it (it keeps its id), exactly once.
    data.delete(keyspace.processed("fragile"))
    first = service.ops.replay_dead_letters("events", actor="key-1")
    assert first.replayed == 1 and service.dead_letters.length("events") == 0
    again = service.ops.replay_dead_letters("events", ids=[letter["id"]], actor="key-1")
    assert (again.replayed, again.already_gone) == (0, 1)
    service.processor.drain("c1")
    assert len(records_in(data, "fragile")) == 1 and stored_events(data) == 4
    audits = [e for e in service.audit.entries() if e["action"] == "dlq.replay"]
    assert [a["count"] for a in audits] == [1, 0] and audits[0]["actor"] == "key-1"


def test_replaying_a_record_already_stored_does_not_store_it_twice(idle) -> None:
    service, data = idle
    service.events.track({"type": "click", "userId": "u1", "messageId": "once"})
    [entry] = service.queue.read("c1", 10)
    service.processor.process([entry])
    service.dead_letters.add_record("events", entry.records[0], "processing_error", 5)
    assert service.ops.replay_dead_letters("events").replayed == 1
    service.processor.drain("c1")
    assert len(records_in(data, "click")) == 1 and stored_events(data) == 1


def test_a_dead_letter_is_requeued_once_even_by_racing_replays(idle) -> None:
    service, data = idle
    record = records_of(service, [{"type": "click", "userId": "u", "messageId": "r"}])[0]
    service.dead_letters.add_record("events", record, "processing_error", 5)
    [item] = service.dead_letters.entries("events")
    fields = service.queue.fields([record])
    assert service.dead_letters.requeue("events", item["id"], keyspace.EVENT_QUEUE, fields)
    assert not service.dead_letters.requeue("events", item["id"], keyspace.EVENT_QUEUE, fields)
    assert data.xlen(keyspace.EVENT_QUEUE) == 1


def test_segment_messages_are_mapped_and_validated_again_on_replay(make_stack) -> None:
    stack = make_stack(ANALYTICS_SEGMENT_UNKNOWN_EVENTS="reject")
    service, data = stack.app().extensions["analytics"], stack.redis.client(0)
    message = {
        "type": "track",
        "event": "Checkout",
        "userId": "u-9",
        "writeKey": "secret",
        "properties": {"email": "a@b.example", "total": 12},
    }
    service.dead_letters.add_raw("segment", message, "unknown_event_type")
    stored = b"".join(v for _, f in data.xrange(dlq_key("segment")) for v in f.values())
    assert b"a@b.example" not in stored and b"u-9" not in stored
    assert service.ops.replay_dead_letters("segment").still_invalid == 1  # policy: reject
    service.events.register_event_type("Checkout")
    assert service.ops.replay_dead_letters("segment").replayed == 1
    service.processor.drain("c1")
    [event], _ = service.events.get_events({"type": "Checkout"})
    assert event["properties"] == {"email": "a@b.example", "total": 12}
    assert event["userId"] == "u-9" and service.dead_letters.length("segment") == 0


def test_unknown_kinds_are_refused(idle) -> None:
    service, _ = idle
    with pytest.raises(ValidationError):
        service.ops.replay_dead_letters("nope")


def test_records_of_a_user_erased_meanwhile_are_not_dead_lettered_either(idle) -> None:
    service, data = idle
    good = records_of(service, [{"type": "click", "userId": "gone", "messageId": "g1"}])[0]
    bad = {**good, "i": "other-id", "m": "bad-1", "ts": "not-a-time"}
    data.xadd(keyspace.EVENT_QUEUE, {"e": orjson.dumps([good, bad])})
    entries = service.queue.read("c1", 10)  # a worker holds them...
    service.privacy.erase_user("gone", actor="test")  # ...while the user is erased
    result = service.processor.process(entries)
    assert (result.stored, result.dead_lettered, result.erased) == (0, 0, 2)
    assert service.dead_letters.length() == 0 and service.queue.pending() == 0
