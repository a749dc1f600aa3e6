"""Web and worker nodes are stateless: two "hosts", each a process group
started from the Procfile by honcho with an environment of its own (its
port, its processes), share nothing but Redis and the broker. A client
reads through one host what was sent through the other, the WebSocket of
one host carries what the other took in, and when a whole host dies
mid-stream (every process SIGKILLed), the clients go on with the other
one: every accepted event is stored exactly once.

``slow``: two honcho process groups and their servers.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path

import orjson
import pytest
import requests
import websocket

from testkit import ROOT, Process, free_port, python_env, wait_until
from tests.cli.test_devserver import descendants
from tests.tasks.test_faults import assert_events_stored_once, held

TOTAL = 3000
BATCH = 50


class Host:
    """One machine's share of the service: ``honcho start`` of some of the
    Procfile's processes, from a directory of its own."""

    def __init__(self, name: str, env: dict[str, str], root: Path, processes: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir = root / name
        workdir.mkdir()
        for file in ("Procfile", "gunicorn.conf.py"):
            shutil.copy(ROOT / file, workdir / file)
        environ = python_env(env)
        environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")])
        environ.update(PORT=str(self.port), WEB_CONCURRENCY="1", WEB_THREADS="8", WORKER_CONCURRENCY="1")
        command = shlex.join([sys.executable, "-m", "honcho", "start", *processes])
        self.process = Process(name, ["bash", "-c", f"cd {shlex.quote(str(workdir))} && exec {command}"], environ, root)
        self.pids: list[int] = []

    def start(self) -> Host:
        self.process.start()

        def ready() -> bool:
            try:
                return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 90, 0.2, f"the web process of {self.process.name}")
        self.process.wait_for_log(r"ready\.", timeout=60)  # its Celery worker
        self.pids = descendants(self.process.pid)
        return self

    def signal(self, sig: int) -> None:
        """Signal every process of the group."""
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def die(self) -> None:
        """The machine is gone: every process of the group, at once."""
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        self.die()
        self.process.stop()  # reaps honcho
        for pid in self.pids:
            wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), 10, 0.05, f"pid {pid}")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_two_hosts_share_nothing_but_redis_and_one_may_die(make_stack, tmp_path: Path) -> None:
    stack = make_stack(ANALYTICS_BATCH_SIZE="8")  # Redis only: the hosts bring the processes
    service = stack.app().extensions["analytics"]
    ingest = {"Authorization": f"Bearer {service.access.create('ingest')[0]}"}
    read_key = service.access.create("read")[0]
    first = Host("host-a", stack.env, tmp_path, ["web", "worker"])
    second = Host("host-b", stack.env, tmp_path, ["web", "worker", "beat"])
    try:
        first.start()
        second.start()
        stream = websocket.create_connection(f"ws://127.0.0.1:{second.port}/v1/stream?token={read_key}", timeout=30)
        streamed: set[str] = set()

        def listen() -> None:
            """Host B's stream, read as it comes (a client that falls behind is dropped)."""
            try:
                while len(streamed) < TOTAL:
                    message = orjson.loads(stream.recv())
                    if message["kind"] == "event":
                        streamed.add(message["data"]["messageId"])
            except (websocket.WebSocketException, OSError):
                pass

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        accepted_by: dict[str, int] = {"host-a": 0, "host-b": 0}
        sent_to_a: set[str] = set()

        def send() -> None:
            """A client behind a load balancer: host A until it is gone, then host B
            (the batch that failed is sent again: its messageIds make it once)."""
            target = first
            for start in range(0, TOTAL, BATCH):
                batch = [
                    {"type": "click", "userId": f"u{n % 13}", "messageId": f"node-{n}", "properties": {"n": n}}
                    for n in range(start, start + BATCH)
                ]
                while True:
                    try:
                        reply = requests.post(
                            f"{target.url}/v1/events", json={"batch": batch}, headers=ingest, timeout=5
                        )
                    except requests.RequestException:
                        target = second
                        continue
                    assert reply.status_code == 202, reply.text
                    accepted_by[target.process.name] += reply.json()["accepted"]
                    if target is first:
                        sent_to_a.update(e["messageId"] for e in batch)
                    break

        sender = threading.Thread(target=send)
        sender.start()
        # Host A dies while its worker holds entries.
        data = stack.redis.client()

        # Host A dies mid-stream, its worker perhaps holding entries (which
        # host B's worker then takes over; the test of that is in test_scale_out).
        wait_until(lambda: accepted_by["host-a"] >= 10 * BATCH, 60, 0.01, "host A at work")
        first.die()
        sender.join(120)
        assert not sender.is_alive()
        assert accepted_by["host-a"] and accepted_by["host-b"]  # both took part
        wait_until(lambda: held(service) == 0 and service.queue.length() == 0, 90, 0.2, "host B to take over")
        assert_events_stored_once(data, TOTAL)

        # Read through host B what host A took in; host B's stream carried it.
        listed: set[str] = set()
        cursor = None
        while True:
            page = requests.get(
                f"{second.url}/v1/events",
                params={"type": "click", "limit": 1000, **({"cursor": cursor} if cursor else {})},
                headers={"Authorization": f"Bearer {read_key}"},
                timeout=10,
            ).json()
            listed.update(e["messageId"] for e in page["events"])
            cursor = page["next"]
            if not cursor:
                break
        assert len(listed) == TOTAL and sent_to_a <= listed
        wait_until(lambda: streamed & sent_to_a, 20, 0.1, "host A's events on host B's stream")
        stream.close()
    finally:
        first.stop()
        second.stop()
