"""Erasure rewrites the append-only file, so erased records leave the disk
(on a redis-server of its own, AOF on, as production runs it)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from analytics import Analytics, Settings
from analytics.redis_client import connect
from testkit import RedisServer, records_in, wait_until

KEY = Fernet.generate_key().decode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis_server = RedisServer(tmp_path / "redis").start()
    yield redis_server
    redis_server.stop()


def aof_bytes(server: RedisServer) -> bytes:
    """Every file of the AOF (Redis 7: base, incremental and manifest
    files under ``appendonlydir``)."""
    return b"".join(p.read_bytes() for p in sorted((server.dir / "appendonlydir").iterdir()))


def rewrites(server: RedisServer) -> tuple[int, int]:
    info = server.client().info("persistence")
    return int(info.get("aof_rewrites", 0)), int(info["aof_rewrite_in_progress"])


def test_erasure_rewrites_the_aof_and_the_erased_records_leave_it(server) -> None:
    # The rewritten base as commands, not RDB: RDB compresses strings
    # (LZF), so a byte search there would find nothing either way.
    server.client().config_set("aof-use-rdb-preamble", "no")
    settings = Settings.from_env({"REDIS_URL": server.url(), "ANALYTICS_ENCRYPTION_KEYS": KEY})
    service = Analytics(settings, connect(settings))
    service.events.track_many(
        [
            {"type": "click", "userId": user, "messageId": f"{user}-{i}", "properties": {"email": f"{user}@x.org"}}
            for user in ("doomed-user", "other-user")
            for i in range(3)
        ]
    )
    service.processor.drain("test", budget=2)
    records = records_in(server.client(), "click")
    doomed_hash = service.codec.user_hash("doomed-user")
    # The sealed parts (random ciphertext: no compression changes them) of
    # the user's records, and of another user's that must stay.
    sealed = {r["u"]: [] for r in records}
    for record in records:
        sealed[record["u"]].append(base64.urlsafe_b64decode(record["s"])[17:])
    doomed, kept = sealed.pop(doomed_hash), next(iter(sealed.values()))
    assert len(doomed) == 3 and len(kept) == 3
    before = aof_bytes(server)
    assert all(part in before for part in doomed + kept)  # written through the AOF
    done_before, _ = rewrites(server)

    report = service.privacy.erase_user("doomed-user", "test")
    assert report.records == 3
    wait_until(lambda: rewrites(server) == (done_before + 1, 0), 20, 0.05, "the AOF rewrite to finish")
    after = aof_bytes(server)
    assert not any(part in after for part in doomed)
    assert all(part in after for part in kept)
    assert service.privacy.erase_user("nobody", "test").records == 0  # a second rewrite, back to back
    wait_until(lambda: rewrites(server) == (done_before + 2, 0), 20, 0.05, "the second AOF rewrite")


def test_no_rewrite_is_asked_of_a_redis_without_aof(server) -> None:
    client = server.client()
    client.config_set("appendonly", "no")
    settings = Settings.from_env({"REDIS_URL": server.url(), "ANALYTICS_ENCRYPTION_KEYS": KEY})
    service = Analytics(settings, connect(settings))
    assert service.eraser.rewrite_aof() == "off"
    assert rewrites(server) == (0, 0)


def test_a_rewrite_running_from_before_the_erasure_is_followed_by_another(server) -> None:
    """A rewrite that began before the erasure may hold the erased records:
    the erasure waits for it and starts its own; past the wait it warns."""
    client = server.client()
    settings = Settings.from_env({"REDIS_URL": server.url(), "ANALYTICS_ENCRYPTION_KEYS": KEY})
    service = Analytics(settings, connect(settings))
    for i in range(10):
        client.set(f"filler:{i}", i)
    client.config_set("rdb-key-save-delay", 100_000)  # 0.1 s per key: a rewrite of about a second
    client.bgrewriteaof()
    assert rewrites(server)[1] == 1
    assert service.eraser.rewrite_aof(wait=0.2) == "failed"  # still running after 0.2 s
    assert service.eraser.rewrite_aof() == "started"  # waited for it, then its own
    client.config_set("rdb-key-save-delay", 0)
    wait_until(lambda: rewrites(server) == (2, 0), 30, 0.05, "both rewrites")
