"""The README's first command, verbatim, in a fresh clone: ``make run``
brings the whole service up (Redis included), takes an event and stores it,
and closing the terminal or Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from cli.devserver import _descendants
from testkit import ROOT, Process, free_port, wait_until


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_make_run_from_a_fresh_clone(tmp_path: Path) -> None:
    checkout = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(checkout)], check=True)
    ports = {"PORT": free_port(), "FLOWER_PORT": free_port(), "redis": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANALYTICS_", "VIRTUAL_ENV", "REDIS", "CELERY"))}
    env.update(
        PORT=str(ports["PORT"]),
        FLOWER_PORT=str(ports["FLOWER_PORT"]),
        REDIS_URL=f"redis://127.0.0.1:{ports['redis']}/0",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{ports['redis']}/1",
        WEB_CONCURRENCY="1",
        WORKER_CONCURRENCY="1",
    )
    # No activated venv: the PATH of a fresh shell.
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    # The first start installs (.venv); the terminal is then closed. The
    # second start reuses the install and the development key; Ctrl-C.
    first = start_use_stop(checkout, env, tmp_path, ports, "first", signal.SIGHUP, install=True)
    second = start_use_stop(checkout, env, tmp_path, ports, "second", signal.SIGINT, install=False)
    assert first == second, "a second start reuses the development admin key"


def start_use_stop(
    checkout: Path,
    env: dict[str, str],
    logs: Path,
    ports: dict[str, int],
    name: str,
    stop: signal.Signals,
    install: bool,
) -> str:
    """``make run`` in ``checkout``; an event in and read back; ``stop`` sent
    to its process group as a terminal sends it; then nothing may be left.
    Returns the development admin key it printed."""
    url = f"http://127.0.0.1:{ports['PORT']}"
    # Its own session, as a terminal's foreground job.
    proc = Process(f"make-run-{name}", ["make", "-C", str(checkout), "run"], env, logs).start()
    try:

        def ready() -> bool:
            assert proc.proc is not None and proc.proc.poll() is None, proc.log()[-3000:]
            try:
                return requests.get(f"{url}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 600 if install else 120, 0.5, "make run's web process")
        key = (checkout / ".run" / "dev-admin-key").read_text().strip()
        assert f"development admin key: {key}" in proc.log()
        headers = {"Authorization": f"Bearer {key}"}
        event = {"type": "page_view", "userId": f"u-{name}", "messageId": f"fresh-clone-{name}"}
        reply = requests.post(f"{url}/v1/events", headers=headers, json=event, timeout=10)
        assert reply.status_code == 202, reply.text

        def stored() -> bool:
            found = requests.get(f"{url}/v1/events", params={"userId": f"u-{name}"}, headers=headers, timeout=10)
            return [e["messageId"] for e in found.json()["events"]] == [f"fresh-clone-{name}"]

        wait_until(stored, 60, 0.5, "the event to be stored and read back")
        wait_until(lambda: listening(ports["FLOWER_PORT"]), 60, 0.5, "Flower")
        started = [proc.pid, *_descendants(proc.pid)]
        assert len(started) >= 6  # make, analytics run, honcho, gunicorn, worker, beat, flower, redis
        os.killpg(proc.pid, stop)
        wait_until(lambda: not any(alive(p) for p in started), 60, 0.2, f"every process gone after {stop.name}")
    finally:
        proc.stop(timeout=10)
    assert [p for p in ports.values() if not port_free(p)] == []
    return key
