"""Revocation reaches open streams: a key revoked from the command line (a
process of its own) or a user erased (over HTTP through another web process,
or from the command line) closes the streams open with it, with 1008, in
well under a second; a revocation whose notice never came is caught by the
hub's periodic key check. Real gunicorn servers, the test session's Redis and
Celery worker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from testkit import python_env, wait_until
from tests.web.test_stream import close_of, connect, post, receive, subscribe
from tests.webservers import WebServer

USER = "patient-revocation@example.com"


@pytest.fixture(scope="module")
def servers(env: dict[str, str], tmp_root: Path, worker: Any) -> Iterator[tuple[WebServer, WebServer]]:
    """Two web processes on the same Redis: the stream is on the first."""
    logs = tmp_root / "revocation-logs"
    logs.mkdir(exist_ok=True)
    a = WebServer("web-revoke-a", env, logs).start()
    b = WebServer("web-revoke-b", env, logs).start()
    yield a, b
    a.stop()
    b.stop()


class CloseWatch:
    """Waits in a thread for a socket's close frame and notes when it came."""

    def __init__(self, ws: Any) -> None:
        self.result: tuple[int, str, list[dict[str, Any]]] | None = None
        self.at = 0.0
        self._thread = threading.Thread(target=self._wait, args=(ws,), daemon=True)
        self._thread.start()

    def _wait(self, ws: Any) -> None:
        self.result = close_of(ws, timeout=30)
        self.at = time.monotonic()

    def join(self, timeout: float = 30) -> tuple[int, str, list[dict[str, Any]]]:
        self._thread.join(timeout)
        assert self.result is not None, "no close frame"
        return self.result


def cli(env: dict[str, str], *args: str) -> str:
    """Run ``analytics ARGS`` as its own process, as an operator would."""
    argv = [str(Path(sys.executable).parent / "analytics"), *args]
    done = subprocess.run(argv, env=python_env(env), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def audited_delay(service: Any, key_id: str, action: str) -> float:
    """Seconds from the audit entry of the revocation (or erasure) to the
    audit entry of the stream's end, both written with the server's clocks."""

    def ends() -> list[dict[str, Any]]:
        return [
            e for e in service.audit.entries(count=100_000) if e["action"] == "stream.close" and e["actor"] == key_id
        ]

    # Written by the stream's thread once the close frame is out.
    wait_until(ends, 10, message="the stream's end in the audit log")
    [end] = ends()
    entries = service.audit.entries(count=100_000)
    cause = [e for e in entries if e["action"] == action and (action != "key.revoke" or e["keyId"] == key_id)][-1]
    assert "revoked" in end["reason"]
    return float(end["ts"]) - float(cause["ts"])


def live_stream(web: WebServer, service: Any, key: str, user: str) -> Any:
    """A stream with ``key`` that provably receives the user's events."""
    ingest_key, _ = service.access.create("ingest")
    ws = connect(web, key)
    subscribe(ws, events=["*"])
    post(web, ingest_key, {"type": "custom", "userId": user, "properties": {"n": 1}})
    [message] = receive(ws, 1)
    assert message["kind"] == "event"
    return ws


def test_a_key_revoked_from_the_cli_closes_its_stream_within_a_second(servers, service, env) -> None:
    web, _ = servers
    secret, key = service.access.create("read", user_id=USER)
    ws = live_stream(web, service, secret, USER)
    bystander_secret, _ = service.access.create("read")
    bystander = connect(web, bystander_secret)
    watch = CloseWatch(ws)
    assert cli(env, "keys", "revoke", key.id).strip() == f"revoked key id {key.id}"
    returned = time.monotonic()
    code, reason, _ = watch.join()
    assert code == 1008 and reason == "key revoked"
    assert watch.at - returned < 1.0  # usually before the command even exits
    assert audited_delay(service, key.id, "key.revoke") < 1.0
    # REST refuses the key too; other streams go on.
    answer = requests.get(web.url + "/v1/events", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert answer.status_code == 401
    assert bystander.connected
    subscribe(bystander, events=["*"])
    bystander.close()


def test_erasing_the_user_over_http_on_another_process_closes_the_stream(servers, service) -> None:
    web, other = servers
    user = "patient-erased-over-http"
    secret, key = service.access.create("read", user_id=user)
    admin, _ = service.access.create("admin")
    ws = live_stream(web, service, secret, user)
    watch = CloseWatch(ws)
    answer = requests.post(
        other.url + "/v1/erase", json={"userId": user}, headers={"Authorization": f"Bearer {admin}"}, timeout=30
    )
    returned = time.monotonic()
    assert answer.status_code == 200, answer.text
    assert answer.json()["keysRevoked"] == [key.id]
    code, reason, _ = watch.join()
    assert code == 1008 and "revoked" in reason
    assert watch.at - returned < 1.0
    assert audited_delay(service, key.id, "user.erase") < 1.0


def test_erasing_the_user_from_the_cli_closes_the_stream(servers, service, env) -> None:
    web, _ = servers
    user = "patient-erased-from-cli"
    secret, key = service.access.create("read", user_id=user)
    ws = live_stream(web, service, secret, user)
    watch = CloseWatch(ws)
    assert "revoked 1 keys" in cli(env, "erase", "--user", user, "--yes")
    returned = time.monotonic()
    code, reason, _ = watch.join()
    assert code == 1008 and "revoked" in reason
    assert watch.at - returned < 1.0
    assert audited_delay(service, key.id, "user.erase") < 1.0


def test_a_revocation_without_notice_is_caught_by_the_key_check(servers, service) -> None:
    web, _ = servers
    secret, key = service.access.create("read")
    ws = connect(web, secret)
    subscribe(ws, events=["*"])
    watch = CloseWatch(ws)
    started = time.monotonic()
    service.api_keys.revoke(key.id)  # the store alone: nothing published
    code, reason, _ = watch.join()
    assert code == 1008 and reason == "key revoked"
    assert watch.at - started < 10  # the check runs every 2 s
    wait_until(lambda: not ws.connected, 5, message="the socket to be closed")
