"""Processes for benchmarks: a private Redis, Celery workers, gunicorn, and a
load generator in separate processes. Everything binds to 127.0.0.1, is
bounded in count and time, and is stopped by pid."""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet

from analytics import Analytics, Settings
from testkit import Process, RedisServer, free_port, python_env, wait_until

ROOT = Path(__file__).resolve().parents[1]


#: The apps compared per request: ours, and the bare Flask parse+LPUSH endpoint.
APPS = {"ours": "web:create_app()", "bare": "bench.bare:create_app()"}


def median_range(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def service_settings(redis: RedisServer) -> dict[str, str]:
    """The service's settings in every bench: ``redis``, fresh keys."""
    return {
        "REDIS_URL": redis.url(0),
        "CELERY_BROKER_URL": redis.url(1),
        "ANALYTICS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ANALYTICS_DEV": "0",
        # One key sends everything here: keep the per-key rate limit on
        # (its cost is measured) but far above what a bench can send.
        "ANALYTICS_RATE_LIMIT": "1000000",
        "ANALYTICS_RATE_BURST": "1000000",
    }


class Stack:
    """Redis + web (gunicorn) + workers, configured like production."""

    def __init__(
        self,
        workdir: Path,
        *,
        web_workers: int = 2,
        worker_concurrency: int = 2,
        aof: str = "everysec",
        env: dict[str, str] | None = None,
    ) -> None:
        self.dir = workdir
        self.redis = RedisServer(workdir / "redis", appendfsync=aof)
        self.redis.start()
        self.port = free_port()
        self.env = python_env(
            {
                **service_settings(self.redis),
                "PORT": str(self.port),
                "WEB_CONCURRENCY": str(web_workers),
                **(env or {}),
            }
        )
        self.web_workers = web_workers
        self.worker_concurrency = worker_concurrency
        self.processes: list[Process] = []

    def start_web(
        self, app: str = "web:create_app()", *, wrapper: tuple[str, ...] = (), timeout: float = 30.0
    ) -> Process:
        """gunicorn serving ``app``, run under ``wrapper`` (say, valgrind)."""
        argv = [
            *wrapper,
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(ROOT / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{self.port}",
            app,
        ]
        proc = Process("web", argv, self.env, self.dir).start()
        self.processes.append(proc)
        wait_until(lambda: _get(self.port, "/healthz") == 200, timeout, 0.1, "gunicorn to answer")
        return proc

    def start_worker(self, app: str = "tasks", extra: list[str] | None = None) -> Process:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            str(self.worker_concurrency),
            "--without-mingle",
            "--without-gossip",
            "--hostname",
            f"bench{len(self.processes)}@%h",
            *(extra or []),
        ]
        proc = Process(f"worker{len(self.processes)}", argv, self.env, self.dir).start()
        self.processes.append(proc)
        time.sleep(0.5)
        proc.wait_for_log(r"ready\.", timeout=60)
        return proc

    def pids_by_role(self) -> dict[str, list[int]]:
        """Root pid of each server process, by role (``web``, ``worker``,
        ``redis``): :func:`cpu_seconds` adds their descendants."""
        roles: dict[str, list[int]] = {"web": [], "worker": [], "redis": [self.redis.process.pid]}
        for proc in self.processes:
            roles["worker" if proc.name.startswith("worker") else "web"].append(proc.pid)
        return {role: pids for role, pids in roles.items() if pids}

    def cpu_seconds(self) -> dict[str, float]:
        return {role: cpu_seconds(pids) for role, pids in self.pids_by_role().items()}

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.redis.stop()


@contextlib.contextmanager
def stack(**kwargs: Any) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as tmp:
        s = Stack(Path(tmp), **kwargs)
        try:
            yield s
        finally:
            s.close()


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by ``pids`` and every process
    below them: gunicorn's master and its workers, Celery's main process and
    its prefork children, a Redis fork. The tree is found by scanning /proc
    for parent pids (this kernel has no /proc/<pid>/task/*/children).

    Each process counts its own time plus that of its children it has reaped
    (``cutime``, ``cstime``), so a child that exits between two readings is
    not lost; a live child is not in its parent's ``cutime``, so nothing is
    counted twice. Resolution is one clock tick (10 ms): use enough load.
    """
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        # The command name, in parentheses, may hold spaces: split after it.
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    tree: set[int] = set()
    todo = [pid for pid in pids if pid in ticks]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [child for child in children.get(pid, []) if child in ticks and child not in tree]
    return sum(ticks[pid] for pid in tree) / os.sysconf("SC_CLK_TCK")


def cpu_us_per(
    before: dict[str, float], after: dict[str, float], count: int, loadgen_seconds: float | None = None
) -> dict[str, float]:
    """CPU microseconds per event (or request) of each role between two
    :meth:`Stack.cpu_seconds` readings, and their ``total``. Unlike
    throughput, this barely moves when a neighbour takes the cores. The load
    generator is reported apart (``loadgen``), never in ``total``."""
    per = {role: (after[role] - before[role]) * 1e6 / count for role in after}
    per["total"] = sum(per.values())
    if loadgen_seconds is not None:
        per["loadgen"] = loadgen_seconds * 1e6 / count
    return per


def _get(port: int, path: str) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


# -- load generation ----------------------------------------------------------


class _Connection:
    """One keep-alive HTTP/1.1 connection that POSTs prepared bodies.

    http.client parses every response's headers with the email package:
    about 200 us of CPU per request, taken from the same two cores as the
    servers measured (a fifth of a single-event request's total). This
    sends one pre-built head per request and reads the reply by its
    Content-Length, at a fraction of that; gunicorn answers every request
    of the suite with a Content-Length."""

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        self.port = port
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        self.head = "\r\n".join(lines) + "\r\nContent-Length: "
        self.sock: socket.socket | None = None
        self.reader: Any = None

    def post(self, body: bytes) -> int:
        """Send ``body``; the response's status. Reconnects when needed."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.reader = self.sock.makefile("rb")
        self.sock.sendall(f"{self.head}{len(body)}\r\n\r\n".encode() + body)
        status = int(self.reader.readline().split(b" ", 2)[1])
        length, close = None, False
        while (line := self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        if length is None:
            raise OSError("response without Content-Length")
        if len(self.reader.read(length)) != length:
            raise OSError("connection closed mid-response")
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
            self.sock = None


def _sender(port: int, path: str, headers: dict[str, str], bodies: list[bytes], deadline: float, out: Any) -> None:
    conn = _Connection(port, path, headers)
    latencies: list[float] = []
    errors = 0
    first = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    for body in bodies:
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        try:
            if conn.post(body) >= 300:
                errors += 1
        except (OSError, ValueError, IndexError):  # refused, reset, or a garbled reply
            errors += 1
            conn.close()
            continue
        latencies.append(time.perf_counter() - started)
    conn.close()
    out.put((latencies, errors, first, time.perf_counter()))


def post_load(
    port: int, path: str, headers: dict[str, str], bodies: list[bytes], connections: int = 4, max_seconds: float = 60.0
) -> dict[str, Any]:
    """POST ``bodies`` over ``connections`` keep-alive connections, each in its
    own process. Returns request count, seconds, latencies (s), errors, the
    senders' CPU seconds (``cpu_seconds``: they are our children, reaped by
    the joins below), and ``busy_seconds``: from the first sender's first
    request to the last answer, without the senders' start (which counts
    for short loads)."""
    ctx = mp.get_context("fork")
    own = os.times()
    out = ctx.Queue()
    deadline = time.monotonic() + max_seconds
    shards = [bodies[i::connections] for i in range(connections)]
    procs = [ctx.Process(target=_sender, args=(port, path, headers, shard, deadline, out)) for shard in shards]
    started = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=max_seconds + 30) for _ in procs]
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join(10)
    done = os.times()
    latencies = [lat for lats, *_ in results for lat in lats]
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "latencies": latencies,
        "errors": sum(e for _, e, *_ in results),
        "busy_seconds": max(r[3] for r in results) - min(r[2] for r in results),
        "cpu_seconds": (done.children_user - own.children_user + done.children_system - own.children_system),
    }


def event_batch(n: int, tag: str, start: int = 0) -> list[dict[str, Any]]:
    """A typical ~250-byte event with PHI fields (userId, email)."""
    return [
        {
            "type": "page_view",
            "userId": f"user-{(start + i) % 5000}",
            "messageId": f"{tag}-{start + i}",
            "properties": {
                "path": f"/articles/{(start + i) % 300}",
                "referrer": "search",
                "email": f"person{(start + i) % 5000}@example.org",
                "plan": "pro",
                "duration_ms": (start + i) % 997,
            },
            "context": {"app": {"version": "2.4.1"}, "locale": "en-US"},
        }
        for i in range(n)
    ]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def create_key(env: dict[str, str], role: str = "admin") -> str:

    service = Analytics.create(Settings.from_env(env))
    return service.access.create(role)[0]


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
