"""Key rotation: everything stored is re-encrypted under the newest key, in
slices, resumably, without clobbering concurrent changes; user hashes stay."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import orjson
import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from analytics import Analytics, Settings, keyspace
from analytics.privacy.rotation import Rotator
from analytics.redis_client import connect
from cli.main import main as cli
from testkit import records_in
from web import create_app

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
USER = "patient-rotate-88c1"


@pytest.fixture
def db(redis_server) -> Iterator[Any]:
    """Database 3: the session worker does not look at it."""
    client = redis_server.client(3)
    client.flushdb()
    yield client
    client.flushdb()


def make_service(redis_server, keys: str) -> Analytics:
    settings = Settings.from_env({"REDIS_URL": redis_server.url(3), "ANALYTICS_ENCRYPTION_KEYS": keys})
    return Analytics(settings, connect(settings))


def stored(db: Any) -> list[dict[str, Any]]:
    found = []
    for key in db.scan_iter(match=keyspace.EVENTS_PROCESSED + "*"):
        found += records_in(db, key.decode()[len(keyspace.EVENTS_PROCESSED) :])
    return found


def key_ids(db: Any, vault: Any) -> set[bytes]:
    ids = {vault.key_id_of(record["s"]) for record in stored(db)}
    for _, fields in db.xrange("analytics:dlq:events"):
        ids.add(vault.key_id_of(fields[b"sealed"].decode()))
    return ids


def fill(service: Analytics, n: int) -> None:
    service.events.track_many(
        [
            {
                "type": "click" if i % 2 else "login",
                "userId": f"{USER}-{i % 7}",
                "properties": {"email": f"p{i}@example.org"},
            }
            for i in range(n)
        ]
    )
    service.processor.drain("test", budget=10)
    for i in range(5):
        service.dead_letters.add_raw(
            "events", {"userId": USER, "i": i}, "invalid_message", service.codec.user_hash(USER)
        )


def test_rotation_re_encrypts_everything_and_keeps_hashes(redis_server, db) -> None:
    old = make_service(redis_server, OLD)
    fill(old, 300)
    before, _ = old.events.get_events({"userId": f"{USER}-3", "limit": 1000})
    rotated = make_service(redis_server, f"{NEW},{OLD}")
    assert key_ids(db, rotated.vault) == {old.vault.current_key_id}

    # CLI: progress bar on stderr, summary on stdout
    env = {"REDIS_URL": redis_server.url(3), "ANALYTICS_ENCRYPTION_KEYS": f"{NEW},{OLD}"}
    result = CliRunner().invoke(cli, ["keys", "rotate-encryption", "--slice", "50"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "re-encrypted 305" in result.output
    assert key_ids(db, rotated.vault) == {rotated.vault.current_key_id}
    assert not db.exists(keyspace.ROTATION)

    # The new key alone opens everything, and user-id queries still work
    # (hashes come from the oldest key / ANALYTICS_HASH_KEY, not the newest).
    after, _ = rotated.events.get_events({"userId": f"{USER}-3", "limit": 1000})
    assert after == before and len(after) > 10
    assert rotated.codec.user_hash(USER) == old.codec.user_hash(USER)
    assert db.xlen("analytics:dlq:events") == 5
    # a second run has nothing left to do
    again = rotated.privacy.rotate_encryption()
    assert again.rotated == 0 and again.current == 305


def test_rotation_resumes_and_does_not_clobber_concurrent_changes(redis_server, db) -> None:
    old = make_service(redis_server, OLD)
    fill(old, 100)
    new = make_service(redis_server, f"{NEW},{OLD}")
    rotator = Rotator(new.redis, new.vault, slice_size=10)
    first = rotator.run(stop_after=1)  # interrupted after the first hash ("click")
    assert first.rotated == 50 and db.exists(keyspace.ROTATION)

    # Meanwhile: a user's records are erased (their pages rewritten) and a
    # login is stored under the new key (appended to a page).
    erased = old.privacy.erase_user(f"{USER}-0", "test").records
    assert erased == 15
    new.events.track({"type": "login", "userId": f"{USER}-1", "properties": {"email": "late@example.org"}})
    new.processor.drain("test", budget=1)
    logins_left = 50 - len([i for i in range(0, 100, 2) if i % 7 == 0])
    second = Rotator(new.redis, new.vault, slice_size=10).run()
    # resumed: "click" is not walked again; the logins left and 5 dead letters
    assert second.resumed and second.examined == logins_left + 1 + 5
    assert second.rotated == logins_left + 5 and second.current == 1
    assert key_ids(db, new.vault) == {new.vault.current_key_id}
    assert len(stored(db)) == 100 - erased + 1
    assert not db.exists(keyspace.ROTATION)


def test_compare_and_set_leaves_a_value_changed_since_it_was_read(redis_server, db) -> None:
    service = make_service(redis_server, OLD)
    rotator = Rotator(service.redis, service.vault)
    minute = time.time() // 60 * 60  # one time for both: a page holds one minute
    service.events.track({"type": "click", "userId": "u1", "messageId": "one", "timestamp": minute})
    service.processor.drain("test", budget=1)
    [page_id] = [p.decode() for p in db.hkeys(keyspace.processed("click"))]
    read = service.store.page("click", page_id)
    assert read is not None
    service.events.track({"type": "click", "userId": "u2", "messageId": "two", "timestamp": minute})
    service.processor.drain("test", budget=1)
    assert service.store.rewrite("click", page_id, read, lambda fields, blob: None) == -1
    assert sorted(r["i"] for r in records_in(db, "click")) == sorted(map(service.vault.event_id, ["one", "two"]))
    entry = db.xadd("analytics:dlq:events", {"sealed": "x", "ts": "1"})
    assert (
        rotator._cas_stream(keys=["analytics:dlq:events"], args=[entry, "sealed", "stale", "sealed", "y", "ts", "1"])
        == 0
    )
    assert (
        rotator._cas_stream(keys=["analytics:dlq:events"], args=[entry, "sealed", "x", "sealed", "y", "ts", "1"]) == 1
    )
    [(_, fields)] = db.xrange("analytics:dlq:events")
    assert fields == {b"sealed": b"y", b"ts": b"1"}


HASH = Fernet.generate_key().decode()


def test_a_record_under_a_removed_key_comes_back_marked_and_counted(redis_server, db, env, tmp_path) -> None:
    """One record sealed under a key no longer configured, in a page of good
    ones: the page is answered (API, service and export), that record as its
    clear part marked ``"phi": "unavailable"``, and it is counted."""
    keys = {"REDIS_URL": redis_server.url(3), "ANALYTICS_HASH_KEY": HASH}
    minute = int(time.time()) // 60 * 60  # one page: one type, one minute
    old = Analytics(Settings.from_env({**keys, "ANALYTICS_ENCRYPTION_KEYS": OLD}), connect(Settings.from_env(keys)))
    old.events.track(
        {
            "type": "click",
            "userId": USER,
            "messageId": "lost",
            "timestamp": minute,
            "properties": {"email": "lost@example.org", "plan": "pro"},
        }
    )
    old.processor.drain("test", budget=1)
    new_env = {**keys, "ANALYTICS_ENCRYPTION_KEYS": NEW}
    new = Analytics(Settings.from_env(new_env), connect(Settings.from_env(new_env)))
    new.events.track_many(
        [
            {
                "type": "click",
                "userId": USER,
                "messageId": f"good-{i}",
                "timestamp": minute + 1 + i,
                "properties": {"email": f"g{i}@example.org", "plan": "free"},
            }
            for i in range(4)
        ]
    )
    new.processor.drain("test", budget=1)
    assert len(db.hkeys(keyspace.processed("click"))) == 1  # all five in one page

    events, _ = new.events.get_events({"limit": 100})
    # (the lost record's messageId may be sealed too: it is told by its mark)
    good = {e["messageId"]: e for e in events if "phi" not in e}
    [lost] = [e for e in events if e.get("phi") == "unavailable"]
    assert sorted(good) == ["good-0", "good-1", "good-2", "good-3"] and len(events) == 5
    assert all(good[f"good-{i}"]["properties"]["email"] == f"g{i}@example.org" for i in range(4))
    assert lost["id"] == new.vault.event_id("lost") and lost["type"] == "click"
    assert "email" not in lost["properties"] and "lost@example.org" not in str(lost)
    assert new.ops.stats_snapshot()["unreadable_records"] == 1

    # the HTTP API: 200 with the page, the figure in /v1/stats and /metrics
    app = create_app({**env, **new_env, "TESTING": True})
    http = app.test_client()
    read = {"Authorization": f"Bearer {new.access.create('read')[0]}"}
    response = http.get("/v1/events?limit=100", headers=read)
    assert response.status_code == 200, response.get_json()
    marked = [e for e in response.get_json()["events"] if e.get("phi") == "unavailable"]
    assert [e["id"] for e in marked] == [lost["id"]] and len(response.get_json()["events"]) == 5
    assert http.get("/v1/stats", headers=read).get_json()["unreadable_records"] == 2
    assert "analytics_unreadable_records 2.0" in http.get("/metrics").get_data(as_text=True)

    # analytics export
    target = tmp_path / "out.ndjson"
    result = CliRunner().invoke(
        cli, ["export", "-o", str(target), "-q"], env={**env, **new_env}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    exported = {e["id"]: e for e in map(orjson.loads, target.read_text().splitlines())}
    assert len(exported) == 5 and exported[lost["id"]]["phi"] == "unavailable"
    exported = {e["messageId"]: e for e in exported.values() if "phi" not in e}
    assert exported["good-2"]["properties"]["email"] == "g2@example.org"
    assert new.ops.stats_snapshot()["unreadable_records"] == 3


def queued_key_ids(db: Any, vault: Any) -> dict[bytes, set[bytes]]:
    """Entry id -> the key ids of the seals its records carry."""
    found: dict[bytes, set[bytes]] = {}
    for entry_id, fields in db.xrange(keyspace.EVENT_QUEUE):
        found[entry_id] = set()
        for item in msgpack.unpackb(fields[b"r"]):
            sealed = msgpack.unpackb(item[5])[11]
            found[entry_id].add(vault.key_id_of(base64.urlsafe_b64encode(sealed).decode()))
    return found


def test_rotation_re_seals_undelivered_queue_entries_and_leaves_pending_ones(redis_server, db) -> None:
    """Queue entries no worker has been given are re-appended re-sealed;
    an entry a worker holds is left to that worker (counted as pending)."""
    old = make_service(redis_server, OLD)
    for i in range(4):  # four entries (one per call) of two events each
        old.events.track_many(
            [
                {"type": "click", "userId": f"{USER}-{i}", "properties": {"email": f"q{i}{j}@example.org"}}
                for j in range(2)
            ]
        )
    old.queue.ensure_groups()
    [held] = old.queue.read("worker-a", 1)  # delivered: pending in worker-a's hands
    fill_dead = {"userId": USER, "i": 1}
    old.dead_letters.add_raw("events", fill_dead, "invalid_message", old.codec.user_hash(USER))

    new = make_service(redis_server, f"{NEW},{OLD}")
    before = queued_key_ids(db, new.vault)
    assert set().union(*before.values()) == {old.vault.current_key_id} and len(before) == 4
    report = new.privacy.rotate_encryption()
    assert report.pending == 1 and report.raced == 0 and report.unreadable == 0
    assert report.rotated == 3 * 2 + 1  # three undelivered entries of two, one dead letter

    after = queued_key_ids(db, new.vault)
    assert len(after) == 4
    assert after[held.id.encode()] == {old.vault.current_key_id}  # left as it was, same id
    assert [ids for entry, ids in after.items() if entry != held.id.encode()] == [{new.vault.current_key_id}] * 3
    pending = db.xpending_range(keyspace.EVENT_QUEUE, keyspace.GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [held.id.encode()]  # still worker-a's
    assert key_ids(db, new.vault) == {new.vault.current_key_id}  # the dead letter too

    # The re-appended entries are delivered and stored as usual, and open
    # with the new key alone.
    new.processor.drain("test", budget=2)
    stored_records = stored(db)
    assert len(stored_records) == 6
    assert {new.vault.key_id_of(r["s"]) for r in stored_records} == {new.vault.current_key_id}
    again = new.privacy.rotate_encryption()
    assert again.rotated == 0 and again.pending == 1


def test_rotation_re_seals_queue_entries_of_the_older_json_form(redis_server, db) -> None:
    old = make_service(redis_server, OLD)
    record = old.codec.encode(
        {"type": "click", "userId": USER, "messageId": "json-1", "properties": {"email": "j@example.org"}},
        "normal",
        1_700_000_000_000,
        None,
    )
    assert record["s"]
    db.xadd(keyspace.EVENT_QUEUE, {"e": orjson.dumps([record, {**record, "s": None}])})
    new = make_service(redis_server, f"{NEW},{OLD}")
    report = new.privacy.rotate_encryption()
    assert (report.rotated, report.pending, report.unreadable) == (1, 0, 0)
    [(_, fields)] = db.xrange(keyspace.EVENT_QUEUE)
    first, second = orjson.loads(fields[b"e"])
    assert new.vault.key_id_of(first["s"]) == new.vault.current_key_id and second["s"] is None
    assert new.vault.open(first["s"]) == old.vault.open(record["s"])
