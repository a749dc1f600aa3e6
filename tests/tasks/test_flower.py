"""Flower, as the Procfile runs it, sees the worker and the processed tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from testkit import Process, free_port, python_env, wait_until


@pytest.mark.slow
def test_flower_with_basic_auth_shows_workers_and_tasks(make_stack, tmp_path) -> None:
    stack = make_stack()
    stack.worker()
    app = stack.app()
    client = app.test_client()
    secret, _ = app.extensions["analytics"].access.create("ingest")
    port = free_port()
    flower_env = python_env({**stack.env, "FLOWER_BASIC_AUTH": "ops:s3cret-pass", "FLOWER_PORT": str(port)})
    # The Procfile line, with the address pinned to loopback for the test.
    flower = Process(
        "flower",
        [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}", "--address=127.0.0.1"],
        flower_env,
        tmp_path,
    ).start()
    try:
        base = f"http://127.0.0.1:{port}"
        auth = ("ops", "s3cret-pass")

        def up() -> bool:
            try:
                return requests.get(f"{base}/healthcheck", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, 60, 0.2, "flower to answer")
        assert requests.get(f"{base}/api/workers", timeout=10).status_code == 401
        assert requests.get(f"{base}/api/workers", auth=("ops", "wrong"), timeout=10).status_code == 401

        def workers() -> dict:
            reply = requests.get(f"{base}/api/workers?refresh=1", auth=auth, timeout=30)
            assert reply.status_code == 200
            return reply.json()

        names = wait_until(workers, 60, 1.0, "flower to list the worker")
        assert any(name.startswith("worker1@") for name in names)

        for i in range(3):  # each request wakes a processing task
            batch = [{"type": "click", "userId": "u", "messageId": f"flower-{i}-{j}"} for j in range(5)]
            assert (
                client.post(
                    "/v1/events", json={"batch": batch}, headers={"Authorization": f"Bearer {secret}"}
                ).status_code
                == 202
            )

        def processed() -> list:
            reply = requests.get(f"{base}/api/tasks", auth=auth, timeout=10)
            assert reply.status_code == 200
            return [
                t for t in reply.json().values() if t["name"] == "analytics.process_events" and t["state"] == "SUCCESS"
            ]

        done = wait_until(processed, 60, 0.5, "flower to see processed tasks")
        assert done[0]["worker"].startswith("worker1@")
    finally:
        flower.stop()


@pytest.mark.slow
def test_flower_refuses_to_start_without_authentication(env, tmp_path) -> None:
    flower_env = python_env(env)
    flower_env.pop("FLOWER_BASIC_AUTH", None)
    flower = Process(
        "flower-noauth",
        [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={free_port()}", "--address=127.0.0.1"],
        flower_env,
        tmp_path,
    ).start()
    try:
        assert flower.proc is not None and flower.proc.wait(60) != 0
        assert "set FLOWER_BASIC_AUTH=user:password" in flower.log()
        assert "Traceback" not in flower.log()
    finally:
        flower.stop()


def start_flower_in(directory: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """``celery -A tasks flower`` started in ``directory`` (not the
    repository: no ``flowerconfig.py`` there), the project found as an
    installed package is (no PYTHONPATH)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_") and k != "PYTHONPATH"}
    environ.update(env)
    with (directory / "flower.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}", "--address=127.0.0.1"],
            env=environ,
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_flower_started_outside_the_repository_requires_authentication_too(env, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert not (elsewhere / "flowerconfig.py").exists()
    broker = {k: v for k, v in env.items() if not k.startswith("FLOWER_")}
    refused = start_flower_in(elsewhere, broker, free_port())
    try:
        assert refused.wait(60) != 0
    finally:
        stop(refused)
    log = (elsewhere / "flower.log").read_text()
    assert "set FLOWER_BASIC_AUTH=user:password" in log and "Traceback" not in log

    # With authentication it serves, and asks for it (the settings of the
    # project's flowerconfig apply there too).
    port = free_port()
    served = start_flower_in(elsewhere, {**broker, "FLOWER_BASIC_AUTH": "ops:s3cret-pass"}, port)
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert served.poll() is None, (elsewhere / "flower.log").read_text()
            try:
                return requests.get(f"{base}/healthcheck", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, 60, 0.2, "flower to answer")
        assert requests.get(f"{base}/api/workers", timeout=10).status_code == 401
        assert requests.get(f"{base}/", timeout=10).status_code == 401
        assert requests.get(f"{base}/api/workers", auth=("ops", "s3cret-pass"), timeout=30).status_code == 200
    finally:
        stop(served)
