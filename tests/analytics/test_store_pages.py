"""The paged event store with real Redis: exact order and cursors across
pages (late events, several types, users, filters, scan limits) checked by
hypothesis against a sorted list; dedupe; erasure and retention inside
shared pages; the compact record form."""

from __future__ import annotations

import copy
import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import orjson
import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics import Analytics, Settings, keyspace
from analytics.events import records
from analytics.events.codec import RecordCodec
from analytics.events.fastpath import load_split
from analytics.events.schemas import event_schema, format_time_ms
from analytics.events.store import BUCKET_MS
from analytics.privacy import phi
from analytics.privacy.crypto import Vault
from analytics.redis_client import connect
from analytics.settings import DEFAULT_PHI_FIELDS
from testkit import records_in, stored_events

DB = 4  # the session worker does not look at it
#: A minute, an hour ago: timestamps of the generated events start there.
BASE = (int(time.time()) // 60 - 60) * 60_000


@pytest.fixture
def db(redis_server) -> Iterator[Any]:
    client = redis_server.client(DB)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def store_service(redis_server, encryption_keys) -> Analytics:
    settings = Settings.from_env({"REDIS_URL": redis_server.url(DB), "ANALYTICS_ENCRYPTION_KEYS": encryption_keys})
    service = Analytics(settings, connect(settings))
    service.store.page_bytes = 600  # a few records per page: many pages per minute
    return service


def ingest(service: Analytics, events: list[dict[str, Any]]) -> None:
    assert not service.events.track_many(events).rejected
    service.processor.drain("test", budget=0)


def message_ids(service: Analytics, found: list[dict[str, Any]]) -> list[str]:
    """The messageIds of records, opened (a client's messageId is sealed)."""
    return sorted(service.codec.decode(r, reveal_phi=True)["messageId"] for r in found)


def page_through(service: Analytics, types: list[str], limit: int, max_scan: int, **query: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(1000):
        found, cursor = service.store.query(types, limit=limit, cursor=cursor, max_scan=max_scan, **query)
        assert len(found) <= limit
        ids += [r["i"] for r in found]
        if cursor is None:
            return ids
    raise AssertionError("the cursor never ended")


event_spec = st.tuples(
    st.sampled_from(["click", "login"]),
    st.integers(0, 4 * BUCKET_MS),  # ms after BASE: a few pages' minutes
    st.integers(0, 3),  # user
    st.integers(0, 2),
)  # a property to filter on


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    batches=st.lists(st.lists(event_spec, min_size=1, max_size=25), min_size=1, max_size=3),
    types=st.sampled_from([["click"], ["click", "login"]]),
    user=st.sampled_from([None, 0, 2]),
    start=st.sampled_from([None, BASE + 30_000, BASE + 61_000]),
    end=st.sampled_from([None, BASE + 120_000, BASE + 3 * BUCKET_MS + 1]),
    prop=st.sampled_from([None, 0]),
    limit=st.integers(1, 9),
    max_scan=st.sampled_from([2, 5, 10_000]),
)
def test_queries_walk_pages_in_exact_order_with_exact_cursors(
    db, store_service, batches, types, user, start, end, prop, limit, max_scan
) -> None:
    db.flushdb()
    service = store_service
    for name in types:  # the filtered property stays clear (only declared ones do)
        service.registry.register(name, clear=("properties.v",))
    expected: list[tuple[int, str, str, int, int]] = []
    n = 0
    # Batches arrive one after another: later ones hold events older than
    # those already stored (late events go to the pages of their minute).
    for batch in batches:
        events = []
        for etype, offset, who, value in batch:
            message_id = f"m{n}"
            n += 1
            events.append(
                {
                    "type": etype,
                    "userId": f"user-{who}",
                    "messageId": message_id,
                    "timestamp": format_time_ms(BASE + offset),
                    "properties": {"v": value, "email": f"p{who}@example.org"},
                }
            )
            expected.append((BASE + offset, service.vault.event_id(message_id), etype, who, value))
        ingest(service, events)
    assert stored_events(db) == n

    wanted = sorted(
        (
            e
            for e in expected
            if e[2] in types
            and (user is None or e[3] == user)
            and (start is None or e[0] >= start)
            and (end is None or e[0] <= end)
            and (prop is None or e[4] == prop)
        ),
        key=lambda e: (e[0], e[1]),
        reverse=True,
    )
    query: dict[str, Any] = {"start": start, "end": end}
    if user is not None:
        query["user_hash"] = service.codec.user_hash(f"user-{user}")
    if prop is not None:
        query["where"] = lambda properties: properties.get("v") == prop
    got = page_through(service, types, limit, max_scan, **query)
    assert got == [e[1] for e in wanted]


def test_the_api_pages_events_of_several_types_and_decodes_them(db, store_service) -> None:
    service = store_service
    ingest(
        service,
        [
            {
                "type": "click" if i % 2 else "login",
                "userId": f"u{i % 3}",
                "messageId": f"api-{i}",
                "timestamp": format_time_ms(BASE + i * 997),
                "properties": {"i": i, "email": "x@example.org"},
            }
            for i in range(40)
        ],
    )
    events, cursor = service.events.get_events({"limit": 15})
    assert [e["messageId"] for e in events] == [f"api-{i}" for i in range(39, 24, -1)]
    assert events[0]["userId"] == "u0" and events[0]["properties"] == {"i": 39, "email": "x@example.org"}
    assert events[0]["timestamp"] == format_time_ms(BASE + 39 * 997)
    rest, last = service.events.get_events({"limit": 100, "cursor": cursor})
    assert [e["messageId"] for e in rest] == [f"api-{i}" for i in range(24, -1, -1)] and last is None
    pages = db.hvals(keyspace.processed("click"))
    assert len(pages) > 1  # really several pages; the full ones compressed
    assert any(records.is_compressed(p) for p in pages) and not records.is_compressed(
        service.store.page("click", db.hget(keyspace.open_pages("click"), str((BASE + 39 * 997) // BUCKET_MS)).decode())
        or b""
    )


def test_erasure_and_rotation_keep_full_pages_compressed(db, store_service) -> None:
    service = store_service
    ingest(
        service,
        [
            {
                "type": "click",
                "userId": f"u{i % 2}",
                "messageId": f"z{i}",
                "timestamp": format_time_ms(BASE + i),
                "properties": {"email": "x@example.org"},
            }
            for i in range(30)
        ],
    )
    compressed = [p for p, page in db.hgetall(keyspace.processed("click")).items() if records.is_compressed(page)]
    assert compressed
    assert service.privacy.erase_user("u0", "test").records == 15
    pages = db.hgetall(keyspace.processed("click"))
    assert all(records.is_compressed(pages[p]) for p in compressed if p in pages)
    assert message_ids(service, records_in(db, "click")) == sorted(f"z{i}" for i in range(1, 30, 2))


def test_a_message_id_is_stored_once_in_integer_set_shards(db, store_service) -> None:
    service = store_service
    event = {"type": "click", "userId": "u1", "messageId": "same", "timestamp": format_time_ms(BASE)}
    service.events.track_many([event, event])
    service.events.track(event)
    report = service.processor.drain("test", budget=0)
    assert (report.committed.stored, report.committed.duplicates) == (1, 2)
    ingest(service, [event])
    assert stored_events(db) == 1 and len(records_in(db, "click")) == 1
    shard, member = records.dedupe_key(service.vault.event_id("same"))
    assert db.sismember(keyspace.dedupe_shard(shard), member)
    assert db.object("encoding", keyspace.dedupe_shard(shard)) == b"intset"


def test_erasure_rewrites_shared_pages_and_keeps_other_users(db, store_service) -> None:
    service = store_service
    service.store.page_bytes = 16_000  # every event in one page
    ingest(
        service,
        [
            {
                "type": "click",
                "userId": "gone" if i % 3 == 0 else "stays",
                "messageId": f"e{i}",
                "timestamp": format_time_ms(BASE + i),
                "properties": {"email": "x@example.org"},
            }
            for i in range(12)
        ],
    )
    assert db.hlen(keyspace.processed("click")) == 1
    report = service.privacy.erase_user("gone", "test")
    assert report.records == 4 and stored_events(db) == 8
    left = records_in(db, "click")
    assert message_ids(service, left) == sorted(f"e{i}" for i in range(12) if i % 3)
    assert not db.exists(keyspace.user_index(service.codec.user_hash("gone")))
    events, _ = service.events.get_events({"userId": "stays", "limit": 100})
    assert len(events) == 8
    assert service.events.get_events({"userId": "gone", "limit": 100}) == ([], None)
    # the dedupe marks went too: the same messageIds sent again are new events
    time.sleep(0.01)  # after the tombstone
    ingest(service, [{"type": "click", "userId": "gone", "messageId": "e0", "timestamp": format_time_ms(BASE)}])
    assert stored_events(db) == 9


def test_retention_trims_the_page_that_straddles_the_cutoff(db, store_service) -> None:
    service = store_service
    service.store.page_bytes = 16_000
    cutoff_ms = BASE + 30_000  # the middle of a minute
    now = cutoff_ms / 1000 + service.settings.retention_days * 86400
    ingest(
        service,
        [
            {"type": "click", "userId": "old", "messageId": "o1", "timestamp": format_time_ms(cutoff_ms - 20_000)},
            {"type": "click", "userId": "both", "messageId": "o2", "timestamp": format_time_ms(cutoff_ms - 1)},
            {"type": "click", "userId": "both", "messageId": "n1", "timestamp": format_time_ms(cutoff_ms)},
            {"type": "click", "userId": "new", "messageId": "n2", "timestamp": format_time_ms(cutoff_ms + 20_000)},
            {"type": "click", "userId": "old", "messageId": "o3", "timestamp": format_time_ms(cutoff_ms - 90_000)},
        ],
    )
    assert db.hlen(keyspace.processed("click")) == 2
    report = service.ops.cleanup(now=now)
    assert report.events == 3 and stored_events(db) == 2
    assert message_ids(service, records_in(db, "click")) == ["n1", "n2"]
    assert db.zcard(keyspace.time_index("click")) == db.hlen(keyspace.processed("click")) == 1
    assert not db.exists(keyspace.user_index(service.codec.user_hash("old")))
    assert db.zcard(keyspace.user_index(service.codec.user_hash("both"))) == 1
    for message_id, kept in (("o1", False), ("o2", False), ("n1", True)):
        shard, member = records.dedupe_key(service.vault.event_id(message_id))
        assert bool(db.sismember(keyspace.dedupe_shard(shard), member)) is kept
    assert service.ops.cleanup(now=now).events == 0


def test_retention_keeps_the_index_of_anonymous_visitors_by_page(db, store_service) -> None:
    # Anonymous-only records are indexed under their anonymous hash: expiring
    # them takes the page's member out of that index too, and only then.
    service = store_service
    service.store.page_bytes = 16_000
    cutoff_ms = BASE + 30_000
    now = cutoff_ms / 1000 + service.settings.retention_days * 86400
    ingest(
        service,
        [
            {
                "type": "click",
                "anonymousId": "gone-visitor",
                "messageId": "v1",
                "timestamp": format_time_ms(cutoff_ms - 90_000),
            },
            {
                "type": "click",
                "anonymousId": "kept-visitor",
                "messageId": "v2",
                "timestamp": format_time_ms(cutoff_ms - 90_000),
            },
            {
                "type": "click",
                "anonymousId": "kept-visitor",
                "messageId": "v3",
                "timestamp": format_time_ms(cutoff_ms + 1_000),
            },
        ],
    )
    gone, kept = (keyspace.user_index(service.codec.user_hash(v)) for v in ("gone-visitor", "kept-visitor"))
    assert db.zcard(gone) == 1 and db.zcard(kept) == 2
    assert service.ops.cleanup(now=now).events == 2
    assert not db.exists(gone) and db.zcard(kept) == 1
    assert message_ids(service, records_in(db, "click")) == ["v3"]


def test_the_queue_carries_packed_items_the_worker_does_not_decode(db, store_service) -> None:
    service = store_service
    event = {
        "type": "click",
        "userId": "u1",
        "timestamp": format_time_ms(BASE),
        "properties": {"plan": "pro", "email": "a@example.org"},
    }
    service.events.track(event)
    [entry] = service.queue.read("test", 10)
    [item] = entry.items
    etype, ts, user, shard, member, blob = item
    assert (etype, ts, user) == ("click", BASE, service.codec.user_hash("u1"))
    [record] = entry.records
    assert records.dedupe_key(record["i"]) == (shard, member)
    assert records.unpack("click", blob) == record and isinstance(blob, bytes)
    assert b"a@example.org" not in blob and b"u1" not in blob
    assert uuid.UUID(record["m"])  # a generated messageId, stored as its 16 bytes
    assert len(blob) < 0.7 * len(orjson.dumps(record))  # the JSON record of old


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    record=st.fixed_dictionaries(
        {
            "i": st.one_of(
                st.binary(min_size=12, max_size=12).map(lambda b: records._b64_text(b)),
                st.text(min_size=1, max_size=20),
            ),
            "m": st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=40)),
            "t": st.just("click"),
            "p": st.sampled_from(keyspace.PRIORITIES),
            "ts": st.integers(-(2**40), 2**45),
            "rt": st.integers(0, 2**45),
            "u": st.one_of(st.just(""), st.binary(min_size=16, max_size=16).map(bytes.hex), st.text(max_size=40)),
            "a": st.one_of(st.just(""), st.binary(min_size=16, max_size=16).map(bytes.hex)),
        },
        optional={
            "pr": st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=4),
            "cx": st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=2),
            "tr": st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=2),
            "md": st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=2),
            "s": st.one_of(
                st.binary(min_size=33, max_size=80).map(records._b64_text),
                st.text(alphabet="!~. é", min_size=1, max_size=20),
            ),
        },
    ),
    skew=st.one_of(st.none(), st.tuples(st.integers(0, 2**45), st.integers(0, 2**45))),
)
def test_a_record_packs_and_unpacks_to_itself(record, skew) -> None:
    if skew is not None:
        record["ot"], record["sa"] = skew
    assert records.unpack("click", records.pack(record)) == record


@settings(max_examples=300, deadline=None)
@given(
    value=st.recursive(
        json_values | st.binary(max_size=20) | st.integers(0, 2**64 - 1),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
        max_leaves=12,
    )
)
def test_blobs_are_packed_to_the_bytes_msgpack_gives(value) -> None:
    """records.packb (msgspec, for speed) gives msgpack's own bytes for every
    shape a record, a PHI pair list or a queue item has."""

    assert records.packb(value) == msgpack.packb(value)


def test_the_ingest_encoding_equals_the_record_encoding() -> None:
    """encode_item (raw bytes, the hot path) and queue_item(encode(...)) (the
    record dict, other paths) give the same item and the same record."""

    codec = RecordCodec(
        Vault([Fernet.generate_key().decode()]), phi.PhiPolicy(DEFAULT_PHI_FIELDS.split(",")), 3_600_000
    )
    events = [
        {"type": "click", "userId": "u-1", "messageId": "m-1", "properties": {"email": "a@b.c", "n": 1}},
        {
            "type": "click",
            "anonymousId": "a-1",
            "timestamp": "2026-01-01T00:00:00Z",
            "messageId": "6f1c1d3e-8a55-4b8e-9c55-5a1d3a9b9c11",
            "context": {"ip": "10.0.0.1"},
        },
        {
            "type": "click",
            "userId": "u-2",
            "anonymousId": "a-2",
            "timestamp": 1_700_000_000,
            "traits": {"list": [1, {"name": "N"}]},
            "metadata": {"k": "v"},
        },
    ]
    for raw, fast in itertools.product(events, (False, True)):
        loaded = load_split(raw, codec.policy)
        assert loaded is not None
        for sent_at in (None, 1_700_000_000_500):
            # Split by load_split (the hot path), or by encode_item.
            event, pairs = copy.deepcopy(loaded) if fast else (event_schema.load(raw), None)
            message_id, item = codec.encode_item(event, "high", 1_700_000_001_000, sent_at, pairs)
            record = records.item_record(item)
            assert records.queue_item(record)[:5] == item[:5]
            opened = codec.decode(record, reveal_phi=True)
            assert opened["messageId"] == message_id
            assert (opened["userId"], opened["anonymousId"]) == (raw.get("userId"), raw.get("anonymousId"))
            for field in ("properties", "context", "traits", "metadata"):
                assert opened[field] == raw.get(field, {})


def test_a_record_without_user_id_is_queued_under_its_anonymous_hash(db, store_service) -> None:
    service = store_service
    service.events.track_many(
        [
            {"type": "click", "anonymousId": "visitor-1", "timestamp": format_time_ms(BASE)},
            {"type": "click", "userId": "u1", "anonymousId": "visitor-1", "timestamp": format_time_ms(BASE)},
        ]
    )
    [entry] = service.queue.read("test", 10)
    owners = [item[2] for item in entry.items]
    assert owners == [service.codec.user_hash("visitor-1"), service.codec.user_hash("u1")]
    # the same from a record dict (older queue entries, dead-letter replays)
    assert [records.queue_item(r)[2] for r in entry.records] == owners
