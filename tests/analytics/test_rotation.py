"""Key rotation: everything stored is re-encrypted under the newest key, in
slices, resumably, without clobbering concurrent changes; user hashes stay."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from analytics import AnalyticsService, Settings, keyspace
from analytics.cli import main as cli
from analytics.redis_client import connect
from analytics.rotation import Rotator

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


def make_service(redis_server, keys: str) -> AnalyticsService:
    settings = Settings.from_env({"REDIS_URL": redis_server.url(3),
                                  "ANALYTICS_ENCRYPTION_KEYS": keys})
    return AnalyticsService(settings, connect(settings))


def key_ids(db: Any, vault: Any) -> set[bytes]:
    ids = set()
    for key in db.scan_iter(match=keyspace.EVENTS_PROCESSED + "*"):
        for raw in db.hvals(key):
            ids.add(vault.key_id_of(orjson.loads(raw)["s"]))
    for _, fields in db.xrange("analytics:dlq:events"):
        ids.add(vault.key_id_of(fields[b"sealed"].decode()))
    return ids


def fill(service: AnalyticsService, n: int) -> None:
    service.track_many([{"type": "click" if i % 2 else "login", "userId": f"{USER}-{i % 7}",
                         "properties": {"email": f"p{i}@example.org"}} for i in range(n)])
    service.drain("test", budget=10)
    for i in range(5):
        service.dead_letters.add_raw("events", {"userId": USER, "i": i}, "invalid_message",
                                     service.codec.user_hash(USER))


def test_rotation_re_encrypts_everything_and_keeps_hashes(redis_server, db) -> None:
    old = make_service(redis_server, OLD)
    fill(old, 300)
    before, _ = old.get_events({"userId": f"{USER}-3", "limit": 1000})
    rotated = make_service(redis_server, f"{NEW},{OLD}")
    assert key_ids(db, rotated.vault) == {old.vault.current_key_id}

    # CLI: progress bar on stderr, summary on stdout
    env = {"REDIS_URL": redis_server.url(3), "ANALYTICS_ENCRYPTION_KEYS": f"{NEW},{OLD}"}
    result = CliRunner().invoke(cli, ["keys", "rotate-encryption", "--slice", "50"], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "re-encrypted 305" in result.output
    assert key_ids(db, rotated.vault) == {rotated.vault.current_key_id}
    assert not db.exists(keyspace.ROTATION)

    # The new key alone opens everything, and user-id queries still work
    # (hashes come from the oldest key / ANALYTICS_HASH_KEY, not the newest).
    after, _ = rotated.get_events({"userId": f"{USER}-3", "limit": 1000})
    assert after == before and len(after) > 10
    assert rotated.codec.user_hash(USER) == old.codec.user_hash(USER)
    assert db.xlen("analytics:dlq:events") == 5
    # a second run has nothing left to do
    again = rotated.rotate_encryption()
    assert again.rotated == 0 and again.current == 305


def test_rotation_resumes_and_does_not_clobber_concurrent_changes(redis_server, db) -> None:
    old = make_service(redis_server, OLD)
    fill(old, 100)
    new = make_service(redis_server, f"{NEW},{OLD}")
    rotator = Rotator(new.redis, new.vault, slice_size=10)
    first = rotator.run(stop_after=1)  # interrupted after the first hash ("click")
    assert first.rotated == 50 and db.exists(keyspace.ROTATION)

    # Meanwhile: a record is erased and another rewritten by someone else.
    target = keyspace.processed("login")
    names = sorted(db.hkeys(target))
    db.hdel(target, names[0])
    db.hset(target, names[1], b'{"changed": true}')
    second = Rotator(new.redis, new.vault, slice_size=10).run()
    # resumed: "click" is not walked again; 48 logins and 5 dead letters left
    assert second.resumed and second.examined == 49 + 5
    assert second.rotated == 48 + 5 and second.current == 1
    assert db.hget(target, names[1]) == b'{"changed": true}'
    assert not db.hexists(target, names[0])
    assert key_ids_skipping(db, new.vault) == {new.vault.current_key_id}
    assert not db.exists(keyspace.ROTATION)


def key_ids_skipping(db: Any, vault: Any) -> set[bytes]:
    ids = set()
    for key in db.scan_iter(match=keyspace.EVENTS_PROCESSED + "*"):
        for raw in db.hvals(key):
            record = orjson.loads(raw)
            if "s" in record:
                ids.add(vault.key_id_of(record["s"]))
    return ids


def test_compare_and_set_leaves_a_value_changed_since_it_was_read(redis_server, db) -> None:
    service = make_service(redis_server, OLD)
    rotator = Rotator(service.redis, service.vault)
    db.hset("analytics:events:processed:click", mapping={"a": "v1", "b": "v1"})
    written = rotator._cas_hash(keys=["analytics:events:processed:click"],
                                args=["a", "v1", "v2", "b", "stale", "v2"])
    assert written == 1
    assert db.hgetall("analytics:events:processed:click") == {b"a": b"v2", b"b": b"v1"}
    entry = db.xadd("analytics:dlq:events", {"sealed": "x", "ts": "1"})
    assert rotator._cas_stream(keys=["analytics:dlq:events"],
                               args=[entry, "sealed", "stale", "sealed", "y", "ts", "1"]) == 0
    assert rotator._cas_stream(keys=["analytics:dlq:events"],
                               args=[entry, "sealed", "x", "sealed", "y", "ts", "1"]) == 1
    [(_, fields)] = db.xrange("analytics:dlq:events")
    assert fields == {b"sealed": b"y", b"ts": b"1"}
