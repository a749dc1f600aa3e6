"""Fixtures: real Redis, real Celery worker and beat, the real Flask app.

Layout: Redis db 0 holds the data and is flushed before each test; db 1 is
the Celery broker, left alone so the session's worker keeps its queues.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from cryptography.fernet import Fernet

from testkit import (
    ARTIFACTS,
    Process,
    RedisServer,
    Stack,
    celery_beat,
    free_port,
    python_env,
    service_env,
    start_worker,
    wait_until,
)
from web import create_app


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return tmp_path_factory.mktemp("analytics")


@pytest.fixture(scope="session")
def redis_server(tmp_root: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_root / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def encryption_keys() -> str:
    return ",".join([Fernet.generate_key().decode(), Fernet.generate_key().decode()])


@pytest.fixture(scope="session")
def env(redis_server: RedisServer, encryption_keys: str) -> dict[str, str]:
    return service_env(redis_server, encryption_keys)


@pytest.fixture(scope="session")
def worker(env: dict[str, str], tmp_root: Path) -> Iterator[Process]:
    """One Celery worker (2 processes) and beat for the whole session."""
    logs = tmp_root / "session-logs"
    logs.mkdir(exist_ok=True)
    proc = start_worker("worker", python_env(env), logs)
    beat = celery_beat("beat", python_env(env), logs).start()
    yield proc
    beat.stop()
    proc.stop()
    for log in logs.glob("*.log"):
        shutil.copy(log, ARTIFACTS / f"session-{log.name}")


@pytest.fixture(autouse=True)
def _clean_data(redis_server: RedisServer) -> None:
    redis_server.client(0).flushdb()


@pytest.fixture
def data(redis_server: RedisServer) -> redis.Redis:
    """A client on the data database, to look at what was stored."""
    return redis_server.client(0)


@pytest.fixture
def app(env: dict[str, str]) -> Any:

    return create_app({**env, "TESTING": True})


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def service(app: Any) -> Any:
    return app.extensions["analytics"]


@pytest.fixture
def keys(service: Any) -> dict[str, str]:
    """One key per role, as ``Authorization`` headers."""
    return {role: {"Authorization": f"Bearer {service.access.create(role)[0]}"} for role in ("ingest", "read", "admin")}


@pytest.fixture
def make_stack(tmp_path: Path, encryption_keys: str) -> Iterator[Any]:
    """Factory of private stacks (Redis + workers + beat), closed after the test."""
    stacks: list[Stack] = []

    def make(**env: str) -> Stack:
        stack = Stack(tmp_path / f"stack{len(stacks)}", encryption_keys, **env)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture(scope="session")
def web_server(env: dict[str, str], tmp_root: Path) -> Iterator[str]:
    """The web process as the Procfile runs it (gunicorn), on 127.0.0.1 and
    a free port, for clients that need a real server (SDKs, curl). Yields
    its base URL."""

    logs = tmp_root / "session-logs"
    logs.mkdir(exist_ok=True)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "gunicorn.conf.py",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--threads",
        "8",
        "web:create_app()",
    ]
    proc = Process("gunicorn", argv, python_env(env), logs).start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:

        if proc.proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{proc.log()[-3000:]}")
        try:
            return requests.get(url + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(up, 60, 0.1, "gunicorn to answer")
    yield url
    proc.stop()
    shutil.copy(proc.log_path, ARTIFACTS / "session-gunicorn.log")
