"""``analytics run`` (what ``make run`` starts): the whole stack comes up on
one machine, takes an event and stores it, and stops cleanly."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from testkit import ROOT, Process, free_port, python_env, stored_events, wait_until


def descendants(pid: int) -> list[int]:
    """Pids of the processes below ``pid`` (honcho puts its children in
    sessions of their own, so a process-group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow
def test_analytics_run_serves_and_processes(env, data, tmp_path) -> None:
    port = free_port()
    environ = python_env(env)
    environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")])
    environ["WEB_CONCURRENCY"] = "1"
    environ["WEB_THREADS"] = "4"
    environ["WORKER_CONCURRENCY"] = "1"
    # Run from a scratch directory holding the Procfile, so that what the
    # processes write there (beat's schedule) stays out of the checkout.
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    for name in ("Procfile", "gunicorn.conf.py"):
        shutil.copy(ROOT / name, workdir / name)
    command = shlex.join([sys.executable, "-m", "cli.main", "run", "--no-flower", "--port", str(port)])
    proc = Process(
        "analytics-run", ["bash", "-c", f"cd {shlex.quote(str(workdir))} && exec {command}"], environ, tmp_path
    ).start()
    pids: list[int] = []
    try:
        proc.wait_for_log(r"development admin key: \S+", timeout=60)
        key = re.search(r"development admin key: (\S+)", proc.log()).group(1)  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return requests.get(f"{url}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 90, 0.2, "the web process of `analytics run`")
        pids = descendants(proc.pid)
        reply = requests.post(f"{url}/v1/track", auth=(key, ""), timeout=10, json={"userId": "u-1", "event": "click"})
        assert reply.status_code == 200 and reply.json() == {"success": True}
        wait_until(lambda: stored_events(data) == 1, 60, 0.2, "the event to be stored")
    finally:
        pids = pids or descendants(proc.pid)
        proc.stop(timeout=20)
        for pid in pids:  # only what this test started, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_port_in_use_is_one_clear_line(env) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", "run", "--no-flower", "--port", str(port)],
            env=python_env(env),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stdout.strip().splitlines() == [
        f"analytics run: port {port} (PORT) is in use: stop what holds it, or set PORT"
    ]
