"""The audit log anchored outside Redis: signed checkpoints in a file, and
``audit verify`` reporting truncation, a wiped log and forged checkpoints."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from analytics import Analytics, Settings
from analytics.privacy.audit import AUDIT_HEAD, AUDIT_STREAM
from analytics.redis_client import connect
from cli.main import main as cli
from tasks.celery_app import AUDIT_CHECKPOINT, create_celery_app
from testkit import wait_until

DB = 6
AUDIT_KEY = Fernet.generate_key().decode()


@pytest.fixture
def db(redis_server) -> Iterator[Any]:
    client = redis_server.client(DB)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def environ(redis_server, encryption_keys: str, tmp_path: Path) -> dict[str, str]:
    return {
        "REDIS_URL": redis_server.url(DB),
        "ANALYTICS_DEV": "0",
        "ANALYTICS_ENCRYPTION_KEYS": encryption_keys,
        "ANALYTICS_AUDIT_KEY": AUDIT_KEY,
        "ANALYTICS_AUDIT_CHECKPOINTS": str(tmp_path / "audit" / "checkpoints.jsonl"),
    }


@pytest.fixture
def service(environ: dict[str, str], db) -> Analytics:
    settings = Settings.from_env(environ)
    return Analytics(settings, connect(settings))


def record(service: Analytics, n: int) -> None:
    for i in range(n):
        service.audit.record("test.entry", "system", n=i)


def verify(environ: dict[str, str]) -> tuple[int, list[str]]:
    """``analytics audit verify``: exit code and output lines."""
    result = CliRunner().invoke(cli, ["audit", "verify"], env=environ, catch_exceptions=False)
    return result.exit_code, result.output.strip().splitlines()


def lines(environ: dict[str, str]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in Path(environ["ANALYTICS_AUDIT_CHECKPOINTS"]).read_bytes().splitlines()]


def truncate(db: Any, n: int) -> None:
    """What someone with Redis access could do: delete the newest ``n``
    entries and set the chain head to the new last mac."""
    entries = db.xrange(AUDIT_STREAM)
    for entry_id, _ in entries[-n:]:
        db.xdel(AUDIT_STREAM, entry_id)
    db.set(AUDIT_HEAD, entries[-n - 1][1][b"mac"])


def test_growth_passes_and_each_checkpoint_is_signed_and_linked(service, environ, db) -> None:
    record(service, 5)
    assert service.audit.checkpoint().written
    assert not service.audit.checkpoint().written  # nothing new
    record(service, 3)
    code, out = verify(environ)
    assert code == 0 and out == [
        f"audit log intact: 8 entries verified; extends the checkpoint of {_when(lines(environ)[0]['ts'])} (5 entries)"
    ]
    # verify wrote the next checkpoint
    first, second = lines(environ)
    assert (first["count"], second["count"]) == (5, 8) and second["prev"] == first["sig"] and first["prev"] == ""
    assert second["head"] == db.get(AUDIT_HEAD).decode()
    path = Path(environ["ANALYTICS_AUDIT_CHECKPOINTS"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    record(service, 4)
    assert service.audit.checkpoint().written and service.audit.verify(checkpoint=False).ok
    assert [c["count"] for c in lines(environ)] == [5, 8, 12]


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def test_truncation_is_detected(service, environ, db) -> None:
    record(service, 10)
    assert service.audit.checkpoint().written
    truncate(db, 4)
    assert service.audit.verify(checkpoint=False).checked == 6  # the chain alone looks whole

    code, out = verify(environ)
    assert code == 1 and len(out) == 1
    assert out[0].startswith("audit log BROKEN: the audit log has 6 entries, but the checkpoint of ")
    assert "recorded 10: the newest entries were removed (truncated)" in out[0]

    # Nor does beat's checkpoint launder it, even once the log has grown past the count.
    record(service, 6)
    report = service.audit.checkpoint()
    assert not report.written and "does not extend the last checkpoint" in report.reason
    assert len(lines(environ)) == 1
    code, out = verify(environ)
    assert code == 1 and "entry #10 is not the one the checkpoint" in out[0]


def test_a_wiped_log_is_detected(service, environ, db) -> None:
    record(service, 4)
    assert service.audit.checkpoint().written
    db.delete(AUDIT_STREAM, AUDIT_HEAD)
    code, out = verify(environ)
    assert code == 1 and len(out) == 1
    assert "the audit log is empty, but the checkpoint of" in out[0] and "the log was wiped" in out[0]
    # a fresh chain started in its place does not pass either
    record(service, 9)
    code, out = verify(environ)
    assert code == 1 and "entry #4 is not the one the checkpoint" in out[0]


def test_entries_removed_before_a_checkpoint_are_not_checkpointed(service, environ, db) -> None:
    record(service, 6)
    assert service.audit.checkpoint().written
    record(service, 2)
    first = db.xrange(AUDIT_STREAM)[0][0]
    db.xdel(AUDIT_STREAM, first)
    report = service.audit.checkpoint()
    assert not report.written and "7 entries where the checkpoints and the chain account for 8" in report.reason
    code, out = verify(environ)
    assert code == 1 and "entry #1" in out[0] and "missing" in out[0]


def test_forged_checkpoints_are_detected(service, environ, db, tmp_path) -> None:
    record(service, 3)
    assert service.audit.checkpoint().written
    record(service, 3)
    assert service.audit.checkpoint().written
    path = Path(environ["ANALYTICS_AUDIT_CHECKPOINTS"])
    good = path.read_bytes()
    first, second = good.splitlines()

    # An edited count (to hide a truncation): the signature no longer fits.
    edited = orjson.loads(second)
    edited["count"] = 2
    path.write_bytes(first + b"\n" + orjson.dumps(edited) + b"\n")
    code, out = verify(environ)
    assert code == 1 and len(out) == 1
    assert "checkpoint #2" in out[0] and "bad signature: forged or edited" in out[0]

    # A checkpoint dropped from the middle: the next one's link breaks.
    record(service, 1)
    path.write_bytes(good)
    assert service.audit.checkpoint().written
    third = path.read_bytes().splitlines()[2]
    path.write_bytes(first + b"\n" + third + b"\n")
    code, out = verify(environ)
    assert code == 1 and "checkpoint #2" in out[0] and "does not follow the one before it" in out[0]

    # Signed under another key (the data keys' derived one, say).
    path.write_bytes(good)
    other = {**environ, "ANALYTICS_AUDIT_KEY": Fernet.generate_key().decode()}
    code, out = verify(other)
    assert code == 1 and "checkpoint #1" in out[0] and "bad signature" in out[0]
    # and a writer under the wrong key refuses to append
    settings = Settings.from_env(other)
    assert not Analytics(settings, connect(settings)).audit.checkpoint().written
    assert path.read_bytes() == good

    path.write_bytes(good)
    assert verify(environ)[0] == 0


def test_without_checkpoints_verify_says_the_log_is_not_anchored(service, environ, db) -> None:
    record(service, 2)
    assert Settings.from_env({}).audit_checkpoints == ".run/audit-checkpoints.jsonl"  # on unless emptied
    plain = {**environ, "ANALYTICS_AUDIT_CHECKPOINTS": ""}
    code, out = verify(plain)
    assert code == 0 and out == [
        "audit log intact: 2 entries verified; not anchored: ANALYTICS_AUDIT_CHECKPOINTS is empty"
    ]


def test_beat_writes_checkpoints(make_stack, tmp_path) -> None:
    path = tmp_path / "beat-checkpoints.jsonl"
    assert create_celery_app(Settings()).conf.beat_schedule["audit-checkpoint"]["task"] == AUDIT_CHECKPOINT
    stack = make_stack(
        ANALYTICS_AUDIT_CHECKPOINTS=str(path),
        ANALYTICS_AUDIT_KEY=AUDIT_KEY,
        ANALYTICS_CHECKPOINT_SECONDS="0.5",
    )
    settings = Settings.from_env(stack.env)
    service = Analytics(settings, connect(settings))
    record(service, 3)
    stack.worker()
    stack.beat()
    wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") >= 1, timeout=60)
    record(service, 2)
    wait_until(lambda: orjson.loads(path.read_bytes().splitlines()[-1])["count"] == 5, timeout=60)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert service.audit.verify(checkpoint=False).ok


def test_a_syslog_copy_shows_what_the_file_no_longer_does(service, environ, db, tmp_path) -> None:
    """Checkpoints are also sent to syslog (here a UDP listener); someone
    who truncates the log *and* the checkpoint file is caught by the copy."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    with_syslog = {**environ, "ANALYTICS_AUDIT_SYSLOG": f"127.0.0.1:{receiver.getsockname()[1]}"}
    settings = Settings.from_env(with_syslog)
    mirrored = Analytics(settings, connect(settings))
    record(mirrored, 5)
    assert mirrored.audit.checkpoint().written
    record(mirrored, 5)
    assert mirrored.audit.checkpoint().written
    received = [receiver.recv(4096), receiver.recv(4096)]
    receiver.close()
    assert all(b"analytics-audit-checkpoint: {" in datagram for datagram in received)
    export = tmp_path / "syslog-export.txt"
    export.write_bytes(b"".join(b"Dec  7 21:00:00 host " + d.split(b">", 1)[1] + b"\n" for d in received))

    # Truncated to 5 entries, and the second checkpoint cut from the file.
    truncate(db, 5)
    path = Path(environ["ANALYTICS_AUDIT_CHECKPOINTS"])
    path.write_bytes(path.read_bytes().splitlines(keepends=True)[0])
    assert verify(with_syslog)[0] == 0  # the local file alone is fooled
    code, out = verify_against(with_syslog, export)
    assert code == 1 and len(out) == 1 and "recorded 10: the newest entries were removed (truncated)" in out[0]


def verify_against(environ: dict[str, str], export: Path) -> tuple[int, list[str]]:
    args = ["audit", "verify", "--checkpoints", str(export)]
    result = CliRunner().invoke(cli, args, env=environ, catch_exceptions=False)
    return result.exit_code, result.output.strip().splitlines()
