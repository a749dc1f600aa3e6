"""Key fingerprints: a process whose keys do not fit the stored data refuses
to start with one line; adding a newest key is fine, and the rotation
command is the way to drop the old ones."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from analytics import Analytics, Settings, keyspace
from analytics.redis_client import connect
from analytics.startup import start_process
from cli.main import main as cli
from testkit import ROOT, python_env

OLD = Fernet.generate_key().decode()
MID = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
HASH = Fernet.generate_key().decode()
DB = 5


@pytest.fixture
def db(redis_server) -> Iterator[Any]:
    client = redis_server.client(DB)
    client.flushdb()
    yield client
    client.flushdb()


def environ(redis_server, keys: str, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_server.url(DB), "ANALYTICS_DEV": "0", "ANALYTICS_ENCRYPTION_KEYS": keys, **extra}


def refused(redis_server, keys: str, **extra: str) -> str:
    with pytest.raises(SystemExit) as exc:
        start_process("worker", environ=environ(redis_server, keys, **extra), own_handler=False)
    text = str(exc.value.code)
    assert text.startswith("analytics worker: ") and "\n" not in text
    return text


def test_the_first_start_stores_fingerprints_never_keys(redis_server, db) -> None:
    start_process("web", environ=environ(redis_server, f"{MID},{OLD}"), own_handler=False)
    stored = {k.decode(): v.decode() for k, v in db.hgetall(keyspace.KEY_FINGERPRINTS).items()}
    assert len(stored) == 3 and "hash" in stored
    assert len([k for k in stored if k.startswith("enc:")]) == 2
    dump = repr(db.dump(keyspace.KEY_FINGERPRINTS))
    for key in (OLD, MID):
        assert key not in dump and key[:16] not in dump
    # the same keys start again
    start_process("worker", environ=environ(redis_server, f"{MID},{OLD}"), own_handler=False)


def test_dropping_the_oldest_key_without_a_hash_key_is_refused(redis_server, db) -> None:
    """User hashes come from the oldest key: dropping it would change every
    user hash silently (erasure finding nobody)."""
    start_process("web", environ=environ(redis_server, f"{MID},{OLD}"), own_handler=False)
    text = refused(redis_server, MID)
    assert "user hash key" in text and "erasure would miss users" in text


def test_another_hash_key_is_refused(redis_server, db) -> None:
    start_process("web", environ=environ(redis_server, OLD, ANALYTICS_HASH_KEY=HASH), own_handler=False)
    assert "user hash key" in refused(redis_server, OLD, ANALYTICS_HASH_KEY=Fernet.generate_key().decode())
    assert "user hash key" in refused(redis_server, OLD)  # the hash key left out


def test_a_dropped_old_key_is_refused_a_new_newest_key_accepted(redis_server, db) -> None:
    with_hash = {"ANALYTICS_HASH_KEY": HASH}
    start_process("web", environ=environ(redis_server, f"{MID},{OLD}", **with_hash), own_handler=False)
    text = refused(redis_server, MID, **with_hash)
    assert "ANALYTICS_ENCRYPTION_KEYS lacks 1 key(s)" in text and "rotate-encryption" in text

    # A new newest key first: accepted, and recorded (it seals from now on).
    start_process("web", environ=environ(redis_server, f"{NEW},{MID},{OLD}", **with_hash), own_handler=False)
    assert len([k for k in db.hkeys(keyspace.KEY_FINGERPRINTS) if k.startswith(b"enc:")]) == 3
    # ...so it may not be dropped again without a rotation
    assert "lacks 1 key(s)" in refused(redis_server, f"{MID},{OLD}", **with_hash)

    # The rotation command retires the old keys once it has finished.
    env = environ(redis_server, f"{NEW},{MID},{OLD}", **with_hash)
    result = CliRunner().invoke(cli, ["keys", "rotate-encryption"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    start_process("worker", environ=environ(redis_server, NEW, **with_hash), own_handler=False)


def test_the_cli_refuses_with_one_line(redis_server, db) -> None:
    """Row 6 of the review: the oldest key dropped, no ANALYTICS_HASH_KEY."""
    start_process("web", environ=environ(redis_server, f"{MID},{OLD}"), own_handler=False)
    env = python_env(environ(redis_server, MID))
    env.pop("ANALYTICS_HASH_KEY", None)
    for argv in (["stats"], ["erase", "--user", "patient-1", "--yes"]):
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *argv],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        lines = (done.stdout + done.stderr).strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: the user hash key"), lines


def test_development_mode_is_not_checked(redis_server, db) -> None:
    start_process("web", environ=environ(redis_server, f"{MID},{OLD}"), own_handler=False)
    start_process("web", environ=environ(redis_server, "", ANALYTICS_DEV="1"), own_handler=False)


def test_a_rotation_with_entries_still_pending_keeps_the_old_keys_required(redis_server, db) -> None:
    """A queue entry a worker holds stays sealed under the old key: the
    rotation does not retire it then."""
    with_hash = {"ANALYTICS_HASH_KEY": HASH}
    start_process("web", environ=environ(redis_server, OLD, **with_hash), own_handler=False)
    settings = Settings.from_env(environ(redis_server, OLD, **with_hash))
    old = Analytics(settings, connect(settings))
    old.events.track({"type": "click", "userId": "patient-9", "properties": {"email": "p9@example.org"}})
    old.queue.ensure_groups()
    assert len(old.queue.read("worker-a", 1)) == 1  # held by a worker

    env = environ(redis_server, f"{NEW},{OLD}", **with_hash)
    result = CliRunner().invoke(cli, ["keys", "rotate-encryption"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "lacks 1 key(s)" in refused(redis_server, NEW, **with_hash)
