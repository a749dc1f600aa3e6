"""Ingest -> WebSocket delivery latency, and how many clients a web process holds.

``python -m bench.ws_latency [--quick]`` starts its own ``redis-server``,
gunicorn (the Procfile's ``web``, bound to 127.0.0.1) and a Celery worker on
free ports, then:

1. **latency at a fixed offered load**: 100 connected clients (5k events/s
   for 10 s; quick: 20 clients, 500 events/s, 3 s), two gunicorn workers as
   the Procfile runs them; then the same publishing straight to the fan-out
   channel (``fanout_only``: what the WebSocket side alone adds). The load generator POSTs
   batches of 50 events to ``/v1/events`` on a fixed schedule; each event
   carries its send time; a few *measuring* clients parse every message and
   record ``receive time - send time`` (HTTP + queue + worker + pub/sub +
   fan-out + socket). The other clients are *sinks*: real WebSocket
   connections that read and discard every byte (the server does exactly
   the same work for them), so the measuring side's Python does not become
   the bottleneck. Clients run in a separate process from the load.
2. **clients per process** (not in quick mode): one gunicorn worker, 50
   events/s, growing client counts until delivery p99 exceeds 1 s (or the
   largest step), each step a few seconds.
3. **gthread balance**: two gunicorn workers, both up, 100 connections (a
   burst, and 10 ms apart), with the balanced worker (the default) and with
   ``reuse_port`` instead: clients per worker.

Load goes to 127.0.0.1 only; every step is bounded in time. ``run(quick)``
returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import requests

from analytics import Analytics
from analytics.settings import Settings
from testkit import gunicorn_workers, wait_for_workers

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class _Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


class Stack:
    """Private redis-server + Celery worker; web servers on demand."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis_port = _free_port()
        self.procs: list[_Proc] = []
        self.procs.append(
            _Proc(
                [
                    "redis-server",
                    "--port",
                    str(self.redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(tmp),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--save",
                    "",
                ],
                dict(os.environ),
                tmp / "redis.log",
            )
        )
        self.redis = redis.Redis(port=self.redis_port)
        _wait(self._redis_up, 10, "redis-server")
        key = base64.urlsafe_b64encode(os.urandom(32)).decode()
        self.env = {
            **os.environ,
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/1",
            "ANALYTICS_ENCRYPTION_KEYS": key,
            "ANALYTICS_DEV": "0",
            "ANALYTICS_WS_PING_SECONDS": "60",
            "ANALYTICS_WS_BUFFER": "20000",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        worker = _Proc(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--without-mingle",
                "--without-gossip",
            ],
            self.env,
            tmp / "worker.log",
        )
        self.procs.append(worker)

        service = Analytics.create(Settings.from_env(self.env))
        self.read_key = service.access.create("read", name="bench")[0]
        self.ingest_key = service.access.create("ingest", name="bench")[0]
        _wait(lambda: b"ready." in (tmp / "worker.log").read_bytes(), 60, "the Celery worker")

    def _redis_up(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def web(self, workers: int, threads: int, reuse_port: bool = False) -> tuple[_Proc, int]:
        port = _free_port()
        env = {
            **self.env,
            "WEB_REUSE_PORT": "1" if reuse_port else "0",
            "WEB_CONNECTIONS": str(max(1000, threads + 64)),
        }
        proc = _Proc(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--threads",
                str(threads),
                "--no-control-socket",
                "web:create_app()",
            ],
            env,
            self.tmp / f"web-{port}.log",
        )

        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
            except requests.RequestException:
                return False

        _wait(up, 30, "gunicorn")
        self.procs.append(proc)
        return proc, port

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


# -- clients (run in their own process) ---------------------------------------
def _raw_ws(port: int, token: str) -> socket.socket:
    """A WebSocket connection without a client library: a sink."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/stream?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    sock.setblocking(False)
    return sock


def _frames(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Complete server frames (unmasked) at the start of ``buf``, and the
    bytes they used."""
    out = []
    pos = 0
    while len(buf) - pos >= 2:
        opcode, size = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
        head = 2
        if size == 126:
            if len(buf) - pos < 4:
                break
            size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif size == 127:
            if len(buf) - pos < 10:
                break
            size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        if len(buf) - pos < head + size:
            break
        out.append((opcode, bytes(buf[pos + head : pos + head + size])))
        pos += head + size
    return out, pos


def _clients_main(port: int, token: str, sinks: int, measurers: int, pipe: Any) -> None:
    """Hold ``sinks + measurers`` connections in one selector loop: sinks
    discard what they read, measurers parse every frame and record each
    event's latency. Raw sockets and a minimal frame parser, so that the
    client side stays far cheaper than the server side it measures."""
    measuring = [_raw_ws(port, token) for _ in range(measurers)]
    socks = measuring + [_raw_ws(port, token) for _ in range(sinks)]
    buffers = {s: bytearray() for s in measuring}
    latencies: list[float] = []
    closed: list[str] = []
    sink_bytes = 0
    stop = threading.Event()
    recording = threading.Event()

    def loop() -> None:
        nonlocal sink_bytes
        sel = selectors.DefaultSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in sel.select(0.2):
                sock = key.fileobj
                try:
                    data = sock.recv(1 << 18)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(sock)
                    continue
                if sock not in buffers:
                    sink_bytes += len(data)
                    continue
                now = time.time()
                buf = buffers[sock]  # type: ignore[index]
                buf += data
                frames, used = _frames(buf)
                del buf[:used]
                for opcode, payload in frames:
                    if opcode == 1 and recording.is_set():
                        message = orjson.loads(payload)
                        if message["kind"] == "event":
                            latencies.append(now - message["data"]["properties"]["t0"])
                    elif opcode == 8:
                        closed.append(payload[2:].decode(errors="replace"))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    pipe.send("ready")
    pipe.recv()  # "record"
    recording.set()
    pipe.recv()  # "stop"
    recording.clear()
    stop.set()
    thread.join(5)
    pipe.send({"latencies": latencies, "sink_bytes": sink_bytes, "closed": closed})
    for s in socks:
        s.close()


# -- load ---------------------------------------------------------------------
def _load(port: int, key: str, rate: int, seconds: float, batch: int = 50, threads: int = 4) -> dict[str, Any]:
    """POST ``rate`` events/s in batches on a fixed schedule for ``seconds``."""
    per_thread = rate / threads / batch  # requests per second per thread
    sent = [0] * threads
    late = [0] * threads
    failed = [0] * threads
    started = time.monotonic() + 0.05

    def run(index: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        n = 0
        while True:
            due = started + (n + index / threads) / per_thread
            if due - started >= seconds:
                return
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.1:
                late[index] += 1
            t0 = time.time()
            events = [
                {
                    "type": "api_call",
                    "userId": f"u-{(n * batch + i) % 100}",
                    "properties": {"t0": t0, "seq": n * batch + i},
                }
                for i in range(batch)
            ]
            n += 1
            try:
                response = session.post(f"http://127.0.0.1:{port}/v1/events", json={"batch": events}, timeout=10)
            except requests.RequestException:  # a saturated server: counted, the schedule goes on
                failed[index] += 1
                continue
            if response.status_code == 202:
                sent[index] += batch
            else:
                failed[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    return {
        "sent": sum(sent),
        "seconds": round(elapsed, 2),
        "rate": round(sum(sent) / elapsed),
        "late_requests": sum(late),
        "failed_requests": sum(failed),
    }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _publish(stack: Stack, rate: int, seconds: float, batch: int = 64) -> dict[str, Any]:
    """Fan-out only: PUBLISH batches of records on ``analytics:live:events``
    as the worker's commit does, ``rate`` records/s, skipping HTTP and the
    queue."""

    service = Analytics.create(Settings.from_env(stack.env))
    template = [
        service.codec.encode({"type": "api_call", "userId": f"u-{i}"}, "normal", int(time.time() * 1000), None)
        for i in range(batch)
    ]
    sent = 0
    started = time.monotonic()
    n = 0
    while True:
        due = started + n * batch / rate
        if due - started >= seconds:
            break
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        t0 = time.time()
        for record in template:
            # A clear property the clients read the send time from (properties
            # are sealed by default; the bench writes the record's clear part).
            record["pr"] = {"t0": t0}
        stack.redis.publish("analytics:live:events", orjson.dumps(template))
        sent += batch
        n += 1
    elapsed = time.monotonic() - started
    return {"sent": sent, "seconds": round(elapsed, 2), "rate": round(sent / elapsed)}


def latency_at_load(
    stack: Stack, port: int, clients: int, rate: int, seconds: float, measurers: int = 2, fanout_only: bool = False
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_clients_main, args=(port, stack.read_key, clients - measurers, measurers, child))
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("clients did not connect")
        assert parent.recv() == "ready"
        if fanout_only:
            _publish(stack, rate, 1.0)
        else:
            _load(port, stack.ingest_key, rate, 1.0)  # warm up
        time.sleep(1.0)
        parent.send("record")
        load = _publish(stack, rate, seconds) if fanout_only else _load(port, stack.ingest_key, rate, seconds)
        time.sleep(2.0)  # let the tail arrive
        parent.send("stop")
        if not parent.poll(30):
            raise RuntimeError("clients did not report")
        result = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    lat = result["latencies"]
    expected = load["sent"] * measurers
    return {
        "clients": clients,
        "offered_rate": rate,
        "load": load,
        "delivered_to_measuring_clients": f"{len(lat)}/{expected}",
        "p50_ms": _ms(_percentile(lat, 0.50)),
        "p99_ms": _ms(_percentile(lat, 0.99)),
        "max_ms": _ms(max(lat) if lat else None),
        "sink_mb": round(result["sink_bytes"] / 1e6, 1),
        "closed": result["closed"],
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def balance(stack: Stack, reuse_port: bool, clients: int = 100, spacing: float = 0.01) -> dict[str, Any]:
    """Clients per gunicorn worker (2 workers, both up) after ``clients``
    connections, ``spacing`` seconds apart (0: a burst)."""
    proc, port = stack.web(workers=2, threads=clients + 16, reuse_port=reuse_port)
    socks = []
    try:
        # Connections can only be spread across workers that have loaded the app.
        wait_for_workers(gunicorn_workers(proc.popen.pid), port)
        for _ in range(clients):
            socks.append(_raw_ws(port, stack.read_key))
            time.sleep(spacing)
        time.sleep(2.5)  # one stats interval
        counts = {}
        for key in stack.redis.scan_iter(match="analytics:stats:ws:*"):
            counts[int(key.decode().rsplit("-", 1)[1])] = int(stack.redis.hget(key, "clients") or 0)
        # A worker that got no connection never started its hub: 0 clients.
        per_process = [counts.get(pid, 0) for pid in gunicorn_workers(proc.popen.pid)]
        return {"reuse_port": reuse_port, "spacing_s": spacing, "clients_per_worker": sorted(per_process, reverse=True)}
    finally:
        for s in socks:
            s.close()
        proc.stop()
        stack.procs.remove(proc)


def run(quick: bool = False) -> dict[str, Any]:
    """All three measurements (see the module docs); ``quick``: a smoke run."""
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is needed (apt-get install redis-server)")
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            clients, rate, seconds = (20, 500, 3.0) if quick else (100, 5000, 10.0)
            # The Procfile's default: two gunicorn workers (the balanced worker
            # spreads the clients; each worker fans out every event to its clients).
            web, port = stack.web(workers=2, threads=clients + 32)
            results["latency"] = latency_at_load(stack, port, clients, rate, seconds)
            # The same clients and rate, publishing straight to the fan-out
            # channel: what the WebSocket side alone costs.
            results["fanout_only"] = latency_at_load(stack, port, clients, rate, seconds, fanout_only=True)
            web.stop()
            stack.procs.remove(web)
            if not quick:
                steps = []
                for n in (200, 400, 800, 1600, 3200):
                    web, port = stack.web(workers=1, threads=n + 32)
                    try:
                        step = latency_at_load(stack, port, n, 50, 4.0)
                    except (RuntimeError, OSError) as exc:
                        steps.append({"clients": n, "failed": f"{type(exc).__name__}: {exc}"})
                        break
                    finally:
                        web.stop()
                        stack.procs.remove(web)
                    steps.append(
                        {
                            **{k: step[k] for k in ("clients", "p50_ms", "p99_ms", "delivered_to_measuring_clients")},
                            "failed_ingest_requests": step["load"]["failed_requests"],
                        }
                    )
                    if step["p99_ms"] is None or step["p99_ms"] > 1000:
                        break
                results["clients_per_process_at_50_events_per_s"] = steps
            n = 20 if quick else 100
            results["balance"] = [
                balance(stack, reuse, n, spacing) for spacing in (0.0, 0.01) for reuse in (False, True)
            ]
        finally:
            stack.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    # SIGTERM (timeout, Ctrl-C in a process manager) must still stop the
    # servers this started: exit through the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
