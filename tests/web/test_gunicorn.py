"""The web process as the Procfile runs it: gunicorn, several workers."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from testkit import (
    Process,
    connections_held,
    free_port,
    gunicorn_workers,
    keep_alive_connection,
    pages_indexed,
    python_env,
    records_in,
    stored_events,
    wait_for_workers,
    wait_until,
)
from web import create_app
from web.balanced_worker import STALE_S


def start_gunicorn(env: dict[str, str], log_dir: Path, port: int, workers: int = 2, name: str = "gunicorn") -> Process:
    proc = Process(
        name,
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "web:create_app()"],
        python_env(
            {
                **env,
                "PORT": str(port),
                "WEB_CONCURRENCY": str(workers),
                "WEB_THREADS": "4",
                "PROMETHEUS_MULTIPROC_DIR": str(log_dir / f"prometheus-{port}"),
            }
        ),
        log_dir,
    ).start()

    def up() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            if proc.proc is not None and proc.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{proc.log()[-3000:]}") from None
            return False

    wait_until(up, 60, 0.2, "gunicorn to answer")
    return proc


def counter(text: str, endpoint: str) -> float:
    labels = rf'endpoint="{re.escape(endpoint)}",method="GET",status="200"'
    pattern = rf"^analytics_http_requests_total\{{{labels}\}} (\S+)$"
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


@pytest.mark.slow
def test_metrics_sum_every_gunicorn_worker(env, tmp_path) -> None:
    port = free_port()
    web = start_gunicorn(env, tmp_path, port, workers=3)
    try:
        base = f"http://127.0.0.1:{port}"
        pids = set()
        for _ in range(60):
            assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
        # Each worker hands its request counts over within a second.
        wait_until(
            lambda: counter(requests.get(f"{base}/metrics", timeout=10).text, "health.healthz") >= 60,
            10,
            0.2,
            "every worker's counts",
        )
        for scrapes in range(1, 61):  # whichever worker answers, the count is the total
            if len(pids) >= 2 and scrapes > 12:
                break
            scrape = requests.get(f"{base}/metrics", timeout=10)
            assert scrape.status_code == 200
            assert scrape.headers["Content-Type"].startswith("text/plain")
            text = scrape.text
            assert counter(text, "health.healthz") >= 60
            assert "analytics_redis_up 1.0" in text and "analytics_queue_length" in text
            pids.update(re.findall(r'analytics_process_resident_memory_bytes\{pid="(\d+)"\}', text))
        assert len(pids) >= 2, "one worker answered every scrape: multiprocess mode untested"
    finally:
        web.stop()


@pytest.mark.slow
def test_web_process_sigkilled_mid_request_while_client_retries_stores_no_duplicates(make_stack, tmp_path) -> None:
    stack = make_stack()
    stack.beat()
    stack.worker()
    service = stack.app().extensions["analytics"]
    secret, _ = service.access.create("ingest")
    headers = {"Authorization": f"Bearer {secret}"}
    port = free_port()
    web = start_gunicorn(stack.env, tmp_path, port, workers=2)
    stack.processes.append(web)
    url = f"http://127.0.0.1:{port}/v1/events"
    batches, size = 300, 20
    interrupted: list[int] = []
    progress: list[int] = []
    in_flight = threading.Event()
    done = threading.Event()

    def client() -> None:
        """A client that retries each batch, same messageIds, until it gets a 202."""
        session = requests.Session()
        for b in range(batches):
            batch = [{"type": "click", "userId": f"u{j}", "messageId": f"retry-{b}-{j}"} for j in range(size)]
            while True:
                try:
                    in_flight.set()
                    if session.post(url, json={"batch": batch}, headers=headers, timeout=5).status_code == 202:
                        break
                except requests.RequestException:
                    interrupted.append(b)
                    session.close()
                    session = requests.Session()
                finally:
                    in_flight.clear()
                time.sleep(0.05)
            progress.append(b)
        session.close()
        done.set()

    sender = threading.Thread(target=client, daemon=True)
    sender.start()
    kills = 0
    for round_ in range(1, 3):
        wanted = 60 * round_
        wait_until(lambda: len(progress) >= wanted or done.is_set(), 60, 0.01, "progress")  # noqa: B023
        if done.is_set():
            break
        in_flight.wait(5)  # a request is on its way: kill the server under it
        web.kill(signal.SIGKILL)
        web.proc.wait(10)
        kills += 1
        web = start_gunicorn(stack.env, tmp_path, port, workers=2, name=f"gunicorn{kills}")
        stack.processes.append(web)
    assert done.wait(120), "the client never got through"
    assert kills >= 1 and interrupted, "no request was cut short: the test proved nothing"
    data = stack.redis.client()
    total = batches * size
    wait_until(
        lambda: stored_events(data) >= total and service.queue.length() == 0 and service.queue.pending() == 0,
        60,
        0.2,
        "every event to be stored",
    )
    assert stored_events(data) == total
    assert len(records_in(data, "click")) == total
    assert pages_indexed(data, "click")


def _silent_websocket(port: int, token: str) -> socket.socket:
    """A WebSocket client that completes the handshake, then never reads or
    closes (a stalled or vanished peer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/stream?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 101"), reply[:100]
    return sock


def test_websockets_ended_by_the_server_do_not_stall_the_worker(env, tmp_path) -> None:
    """gunicorn closes a finished connection in the worker's main loop,
    waiting up to 2 s for the peer's FIN; a WebSocket peer that stays silent
    after the server's close frame held every other connection of that
    worker meanwhile (here 6 rejected clients: 12 s)."""
    port = free_port()
    web = start_gunicorn(env, tmp_path, port, workers=1)
    silent: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(6):  # each closed by the server with 1008, then left open by the client
            silent.append(_silent_websocket(port, "not-a-key"))
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=60).status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for sock in silent:
            sock.close()
        web.stop()


def _long_keep_alive(env: dict[str, str]) -> dict[str, str]:
    """``env`` with idle keep-alive connections kept for 60 s, not
    gunicorn's 2 s: the tests count connections that sit idle meanwhile."""
    return {**env, "GUNICORN_CMD_ARGS": "--keep-alive 60"}


@pytest.mark.slow
def test_keep_alive_connections_are_spread_evenly_across_workers(env, tmp_path) -> None:
    """gthread lets whichever worker wakes first accept: long-lived
    connections piled up on one process (6/2 on the ingest benchmark) while
    the other idled. Each worker now takes a connection only while no
    sibling holds fewer, whether clients arrive one by one or at once."""
    port = free_port()
    web = start_gunicorn(_long_keep_alive(env), tmp_path, port, workers=2)
    socks: list[socket.socket] = []
    try:
        # Both forked (on a busy machine the second may still be starting).
        wait_until(lambda: len(gunicorn_workers(web.pid)) == 2, 30, message="two gunicorn workers")
        workers = gunicorn_workers(web.pid)
        wait_for_workers(workers, port)
        for _ in range(8):
            socks.append(keep_alive_connection(port))
        assert sorted(connections_held(workers, port).values()) == [4, 4]
        burst = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
        socks += burst
        for sock in burst:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        for sock in burst:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert sorted(connections_held(workers, port).values()) == [8, 8]
    finally:
        for sock in socks:
            sock.close()
        web.stop()


@pytest.mark.slow
def test_a_hung_worker_does_not_hold_up_new_connections(env, tmp_path) -> None:
    """A stopped worker holding fewer connections must not keep its sibling
    from accepting for ever: once its main loop has been silent for
    ``STALE_S`` it no longer counts."""

    port = free_port()
    web = start_gunicorn(_long_keep_alive(env), tmp_path, port, workers=2)
    socks: list[socket.socket] = []
    stopped: list[int] = []
    try:
        workers = gunicorn_workers(web.pid)
        wait_for_workers(workers, port)
        os.kill(workers[0], signal.SIGSTOP)
        stopped.append(workers[0])
        started = time.monotonic()
        for _ in range(3):  # the running worker takes them all, ahead of the stopped one
            socks.append(keep_alive_connection(port))
        assert time.monotonic() - started < STALE_S + 3
        assert connections_held(workers, port) == {workers[0]: 0, workers[1]: 3}
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        for sock in socks:
            sock.close()
        web.stop()


def test_bodies_are_read_and_capped_as_gunicorn_passes_them(env, tmp_path) -> None:
    """gunicorn ends a body's stream itself: ``web.body`` reads one with a
    Content-Length in one go, a chunked one up to the limit. Either way the
    limit answers the same JSON 413 (werkzeug used to cut a chunked body at
    the limit: a 400), and the connection goes on serving."""

    limited = {**env, "ANALYTICS_MAX_BODY_BYTES": "4096"}
    secret, _ = create_app(limited).extensions["analytics"].access.create("ingest")
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    port = free_port()
    web = start_gunicorn(limited, tmp_path, port, workers=1)
    try:
        url = f"http://127.0.0.1:{port}/v1/events"
        small = json.dumps({"type": "click", "userId": "u-1", "properties": {"note": "x" * 100}})
        large = json.dumps({"type": "click", "userId": "u-1", "properties": {"note": "x" * 5000}})
        session = requests.Session()
        for body in (small, iter([small[:10].encode(), small[10:].encode()])):  # length, chunked
            answer = session.post(url, data=body, headers=headers)
            assert answer.status_code == 202 and answer.json()["accepted"] == 1, answer.text
        for body in (large, iter([large[:10].encode(), large[10:].encode()])):
            answer = session.post(url, data=body, headers=headers)
            assert answer.status_code == 413, answer.text
            assert answer.json()["error"]["code"] == "payload_too_large"
        assert session.post(url, data=small, headers=headers).status_code == 202
    finally:
        web.stop()
