"""``WS /v1/stream`` against real gunicorn servers, the session's Celery
worker and Redis: auth, subscriptions, user scope, fan-out across two web
processes, metric throttling, slow clients, automatic logoff, restarts."""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import websocket

from analytics.live.stats import ws_totals
from testkit import wait_until
from tests.webservers import WebServer


@pytest.fixture(scope="module")
def servers(env: dict[str, str], tmp_root: Path, worker: Any) -> Iterator[tuple[WebServer, WebServer]]:
    """Two web processes (separate gunicorn servers) on the same Redis."""
    logs = tmp_root / "stream-logs"
    logs.mkdir(exist_ok=True)
    a = WebServer("web-a", env, logs).start()
    b = WebServer("web-b", env, logs).start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def server(servers: tuple[WebServer, WebServer]) -> WebServer:
    return servers[0]


@pytest.fixture
def tight_server(env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Factory of servers with their own settings (small buffers, short idle)."""
    started: list[WebServer] = []

    def start(**extra: str) -> WebServer:
        web = WebServer(f"web-tight{len(started)}", {**env, **extra}, tmp_path).start()
        started.append(web)
        return web

    yield start
    for web in started:
        web.stop()


def connect(web: WebServer, key: str | None, *, header: bool = False, **options: Any) -> websocket.WebSocket:
    url = web.ws_url + "/v1/stream"
    kwargs: dict[str, Any] = {"timeout": 10, **options}
    if key is not None and header:
        kwargs["header"] = {"Authorization": f"Bearer {key}"}
    elif key is not None:
        url += f"?token={key}"
    return websocket.create_connection(url, **kwargs)


def subscribe(ws: websocket.WebSocket, **filters: list[str]) -> dict[str, Any]:
    ws.send(orjson.dumps({"action": "subscribe", **filters}).decode())
    reply = orjson.loads(ws.recv())
    assert reply["kind"] == "subscribed", reply
    return reply["data"]


def close_of(ws: websocket.WebSocket, timeout: float = 10) -> tuple[int, str, list[dict[str, Any]]]:
    """Read until the server's close frame: (code, reason, messages before it)."""
    ws.settimeout(timeout)
    messages = []
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
            ws.shutdown()
            return code, data[2:].decode(), messages
        if opcode == websocket.ABNF.OPCODE_TEXT:
            messages.append(orjson.loads(data))


def receive(ws: websocket.WebSocket, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(got)} of {count} messages: {got}")
        ws.settimeout(left)
        got.append(orjson.loads(ws.recv()))
    return got


def nothing_more(ws: websocket.WebSocket, wait: float = 1.0) -> None:
    ws.settimeout(wait)
    with pytest.raises(websocket.WebSocketTimeoutException):
        extra = ws.recv()
        raise AssertionError(f"unexpected message: {extra}")


def post(web: WebServer, key: str, *events: dict[str, Any]) -> None:
    response = requests.post(
        web.url + "/v1/events", json={"batch": list(events)}, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(events)


def test_missing_or_bad_key_closes_1008_within_a_second(server, service, data) -> None:
    ingest_key, _ = service.access.create("ingest")
    for key, header in ((None, False), ("not-a-key", False), ("not-a-key", True), (ingest_key, False)):
        started = time.monotonic()
        ws = connect(server, key, header=header)
        code, reason, messages = close_of(ws, timeout=2)
        assert time.monotonic() - started < 1.0
        assert code == 1008 and "authentication" in reason and messages == []
    # Counted as authentication failures in the process's monitoring figures.
    wait_until(lambda: ws_totals(data)["auth_failures_total"] >= 4, 10, message="auth failures in analytics:stats:ws:*")
    # ... and in the audit log (throttled per address: at least one entry).
    failures = [e for e in service.audit.entries(count=1000) if e["action"] == "auth.failure"]
    assert any(e.get("where") == "websocket" for e in failures)
    [name] = data.keys("analytics:stats:ws:*")
    assert 0 < data.ttl(name) <= 30
    assert set(data.hgetall(name)) >= {
        b"clients",
        b"messages_total",
        b"errors_total",
        b"auth_failures_total",
        b"updated",
    }


def test_events_reach_clients_and_subscriptions_narrow_them(server, service) -> None:
    read_key, _ = service.access.create("read")
    ingest_key, _ = service.access.create("ingest")
    everything = connect(server, read_key, header=True)
    clicks = connect(server, read_key)
    assert subscribe(clicks, events=["click"]) == {"events": ["click"], "metrics": []}
    subscribe(everything, events=["*"], metrics=["*"])
    post(
        server,
        ingest_key,
        {"type": "page_view", "userId": "u-1", "properties": {"path": "/a", "email": "a@example.org"}},
        {"type": "click", "userId": "u-1", "properties": {"button": "ok"}},
    )
    [message] = receive(clicks, 1)
    assert message["kind"] == "event"
    event = message["data"]
    assert event["type"] == "click" and event["userId"] == "u-1"  # PHI opened for a read key
    assert event["properties"] == {"button": "ok"}
    got = receive(everything, 2)
    assert sorted(m["data"]["type"] for m in got) == ["click", "page_view"]
    view = next(m["data"] for m in got if m["data"]["type"] == "page_view")
    assert view["properties"]["email"] == "a@example.org"
    nothing_more(clicks, 0.5)
    # A bad subscription is answered with an error; the connection stays.
    clicks.send('{"action": "subscribe", "events": "click"}')
    error = orjson.loads(clicks.recv())
    assert error["kind"] == "error" and "events" in error["data"]["details"]
    for ws in (everything, clicks):
        ws.close()


def test_user_scoped_key_receives_only_its_users_events(server, service) -> None:
    ingest_key, _ = service.access.create("ingest")
    scoped_key, scoped = service.access.create("read", user_id="patient-1")
    assert scoped.user_hash and "patient-1" not in scoped.user_hash
    all_key, _ = service.access.create("read")
    mine = connect(server, scoped_key)
    everyone = connect(server, all_key)
    subscribe(mine, events=["*"], metrics=["*"])
    subscribe(everyone, events=["*"])
    post(
        server,
        ingest_key,
        {"type": "login", "userId": "patient-2", "properties": {"n": 1}},
        {"type": "login", "userId": "patient-1", "properties": {"n": 2}},
        {"type": "login", "anonymousId": "anon-9", "properties": {"n": 3}},
        {"type": "logout", "userId": "patient-2", "properties": {"n": 4}},
    )
    [own] = receive(mine, 1)
    assert own["data"]["userId"] == "patient-1" and own["data"]["properties"] == {"n": 2}
    seen = receive(everyone, 4)
    assert sorted(m["data"]["properties"]["n"] for m in seen) == [1, 2, 3, 4]
    # Aggregates of everyone's data are not for a user-scoped key.
    service.redis.publish(
        "analytics:live:metrics",
        orjson.dumps(
            [{"name": "visits", "tags": {}, "bucket": 0, "resolution": 60, "count": 1, "sum": 1, "min": 1, "max": 1}]
        ),
    )
    nothing_more(mine, 1.0)
    mine.close()
    everyone.close()


def test_a_client_on_one_web_process_receives_events_ingested_through_another(servers, service) -> None:
    a, b = servers
    read_key, _ = service.access.create("read")
    ingest_key, _ = service.access.create("ingest")
    on_b = connect(b, read_key)
    on_a = connect(a, read_key)
    subscribe(on_b, events=["form_submit"])
    subscribe(on_a, events=["form_submit"])
    post(a, ingest_key, {"type": "form_submit", "userId": "u-7", "properties": {"via": "a"}})
    post(b, ingest_key, {"type": "form_submit", "userId": "u-7", "properties": {"via": "b"}})
    for ws in (on_a, on_b):
        got = receive(ws, 2)
        assert sorted(m["data"]["properties"]["via"] for m in got) == ["a", "b"]
        ws.close()


def metric(count: int, bucket: int = 1_700_000_000, name: str = "api.latency") -> dict[str, Any]:
    return {
        "name": name,
        "tags": {"route": "/login"},
        "bucket": bucket,
        "resolution": 60,
        "count": count,
        "sum": count * 10.0,
        "min": 1.0,
        "max": float(count),
    }


def test_metric_updates_are_throttled_per_series_and_the_last_state_arrives(server, service) -> None:
    read_key, _ = service.access.create("read")
    ws = connect(server, read_key)
    subscribe(ws, metrics=["api.latency"])
    got: list[tuple[float, dict[str, Any]]] = []

    def read() -> None:  # receive while publishing, to time the arrivals
        ws.settimeout(10)
        while not got or got[-1][1]["count"] != 30:
            message = orjson.loads(ws.recv())
            assert message["kind"] == "metric" and message["data"]["name"] == "api.latency"
            got.append((time.monotonic(), message["data"]))

    reader = threading.Thread(target=read)
    reader.start()
    started = time.monotonic()
    for count in range(1, 31):  # 30 updates of one series within ~0.6 s
        service.redis.publish("analytics:live:metrics", orjson.dumps([metric(count), metric(count, name="other")]))
        time.sleep(0.02)
    published = time.monotonic() - started
    reader.join(15)
    assert got and got[-1][1]["count"] == 30
    # Far fewer messages than updates, at most one per second (plus the first).
    assert len(got) <= 2 + published
    times = [t for t, _ in got]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(times))
    assert got[-1][1] == {
        "name": "api.latency",
        "tags": {"route": "/login"},
        "bucket": 1_700_000_000,
        "resolution": 60,
        "count": 30,
        "sum": 300.0,
        "min": 1.0,
        "max": 30.0,
    }
    nothing_more(ws, 1.2)
    ws.close()


def test_a_slow_client_is_dropped_without_slowing_the_others(tight_server, service, data) -> None:
    web = tight_server(ANALYTICS_WS_BUFFER="20")
    read_key, _ = service.access.create("read")
    # The slow client never reads, with a tiny receive window.
    slow = connect(web, read_key, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    fast = connect(web, read_key)
    subscribe(slow, events=["custom"])
    subscribe(fast, events=["custom"])
    filler = "x" * 16_000  # big events fill the socket buffers quickly
    total = 0
    received: list[dict[str, Any]] = []

    def publish_and_read() -> bool:
        nonlocal total
        records = [
            service.codec.encode(
                {"type": "custom", "anonymousId": "a", "properties": {"i": total + i, "pad": filler}},
                "normal",
                int(time.time() * 1000),
                None,
            )
            for i in range(10)
        ]
        total += len(records)
        service.redis.publish("analytics:live:events", orjson.dumps(records))
        received.extend(receive(fast, len(records), timeout=10))
        return ws_totals(data)["errors_total"] >= 1

    wait_until(publish_and_read, 60, 0.05, "the slow client to be dropped")
    assert [m["data"]["properties"]["i"] for m in received] == list(range(total))
    code, reason, _ = close_of(slow, timeout=10)
    assert code == 1013 and "too slow" in reason
    # The fast client goes on.
    service.redis.publish(
        "analytics:live:events",
        orjson.dumps(
            [service.codec.encode({"type": "custom", "anonymousId": "a", "properties": {"i": -1}}, "normal", 0, None)]
        ),
    )
    assert receive(fast, 1)[0]["data"]["properties"] == {"i": -1}
    wait_until(lambda: ws_totals(data)["clients"] == 1, 10, message="the dropped client to be gone")
    fast.close()


def test_idle_clients_are_logged_off_and_active_ones_stay(tight_server, service) -> None:
    web = tight_server(ANALYTICS_WS_IDLE_SECONDS="1.5")
    read_key, _ = service.access.create("read")
    idle = connect(web, read_key)
    active = connect(web, read_key)
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        active.send('{"action": "active"}')
        time.sleep(0.3)
    code, reason, _ = close_of(idle, timeout=5)
    assert code == 4408 and "idle" in reason
    assert active.connected
    active.send('{"action": "active"}')
    subscribe(active, events=["*"])
    code, _, _ = close_of(active, timeout=5)
    assert code == 4408


def test_a_restarting_web_process_closes_streams_with_1001(tight_server, service) -> None:
    web = tight_server()
    read_key, _ = service.access.create("read")
    ws = connect(web, read_key)
    subscribe(ws, events=["*"])
    started = time.monotonic()
    web.process.kill(15)  # SIGTERM, as a deploy or honcho does
    code, reason, _ = close_of(ws, timeout=5)
    assert code == 1001 and "restarting" in reason
    assert time.monotonic() - started < 3  # not after graceful_timeout (10 s)


@pytest.mark.slow
def test_streams_survive_a_redis_restart(make_stack, tmp_path) -> None:
    stack = make_stack()
    web = WebServer("web-redis-restart", stack.env, tmp_path).start()
    try:
        app = stack.app()
        service = app.extensions["analytics"]
        read_key, _ = service.access.create("read")
        ws = connect(web, read_key)
        subscribe(ws, events=["custom"])

        def publish(n: int) -> int:
            record = service.codec.encode(
                {"type": "custom", "anonymousId": "a", "properties": {"n": n}}, "normal", int(time.time() * 1000), None
            )
            return stack.redis.client().publish("analytics:live:events", orjson.dumps([record]))

        # The process's hub is the one subscriber, once its thread has
        # subscribed (it starts with the first client): until then nobody gets it.
        wait_until(lambda: publish(1) == 1, 20, 0.1, "the hub to subscribe")
        assert receive(ws, 1)[0]["data"]["properties"] == {"n": 1}
        stack.redis.stop()
        web.process.wait_for_log("live fan-out cannot reach Redis", timeout=20)
        stack.redis.start()  # same port, same data directory
        web.process.wait_for_log("live fan-out reached Redis again", timeout=30)
        wait_until(lambda: publish(2) == 1, 30, 0.2, "the hub to resubscribe")
        assert receive(ws, 1)[0]["data"]["properties"] == {"n": 2}
        assert ws.connected  # the client never noticed
        ws.close()
    finally:
        web.stop()


def test_pings_drop_a_peer_that_stopped_answering(tight_server, service, data) -> None:
    web = tight_server(ANALYTICS_WS_PING_SECONDS="0.5")
    read_key, _ = service.access.create("read")
    dead = connect(web, read_key)  # never reads, so never answers a ping
    alive = connect(web, read_key)
    alive.settimeout(0.2)
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        try:
            alive.recv()  # websocket-client answers pings while receiving
        except websocket.WebSocketTimeoutException:
            pass
    # Read the dead client's raw bytes (websocket-client would answer the
    # buffered pings on a socket the server already closed).
    dead.sock.settimeout(5)
    raw = b""
    while chunk := dead.sock.recv(65536):
        raw += chunk
    dead.shutdown()
    frames, pos = [], 0
    while pos < len(raw):
        size = raw[pos + 1] & 0x7F  # control frames are short
        frames.append((raw[pos] & 0x0F, raw[pos + 2 : pos + 2 + size]))
        pos += 2 + size
    assert [op for op, _ in frames][:-1] == [0x9] * (len(frames) - 1)  # pings, then the close
    opcode, payload = frames[-1]
    assert opcode == 0x8
    assert struct.unpack("!H", payload[:2])[0] == 1008 and b"Ping/Pong" in payload
    assert alive.connected
    wait_until(lambda: ws_totals(data)["clients"] == 1, 10, message="one client left")
    alive.close()


def test_malformed_messages_get_scrubbed_error_frames_and_the_stream_goes_on(server, service) -> None:
    read_key, _ = service.access.create("read")
    ingest_key, _ = service.access.create("ingest")
    ws = connect(server, read_key)
    long_name = "patient-" + "9" * 10_000
    bad = [
        ('{"action": "subscribe", "events": [{"a": 1}]}', "events"),
        (orjson.dumps({"action": "subscribe", "events": [long_name]}).decode(), "events"),
        ('{"action": "subscribe", "metrics": [{"ssn": "123-45-6789"}]}', "metrics"),
        ('{"action": "subscribe", "jane.doe@example.com": ["x"]}', "_schema"),
        ('{"action": "call 555-201-0064"}', "action"),
        ('["subscribe", {"a": 1}]', "_schema"),
        ("{not json", "_schema"),
    ]
    for raw, field in bad:
        ws.send(raw)
        ws.settimeout(10)
        opcode, frame = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_TEXT  # a frame, not an HTTP 500 written into the socket
        reply = orjson.loads(frame)
        assert reply["kind"] == "error"
        assert reply["data"]["message"] in ("invalid message", "message is not JSON")
        assert field in reply["data"]["details"]
        assert set(reply["data"]["details"]) <= {"_schema", "action", "events", "metrics"}
        for fragment in ('"a"', "999999", "ssn", "123-45", "jane", "555-201", "not json", "call"):
            assert fragment.encode() not in frame, (fragment, frame)
    # Still usable.
    assert subscribe(ws, events=["custom"]) == {"events": ["custom"], "metrics": []}
    post(server, ingest_key, {"type": "custom", "anonymousId": "a", "properties": {"ok": 1}})
    assert receive(ws, 1)[0]["data"]["properties"] == {"ok": 1}
    ws.close()


def keep_sending(ws: websocket.WebSocket, raw: str, limit: float) -> tuple[int, str, list[dict[str, Any]], float]:
    """Send ``raw`` every 0.2 s until the server closes (code, reason,
    messages before the close, seconds it took)."""
    started = time.monotonic()
    messages = []
    while time.monotonic() - started < limit:
        ws.send(raw)
        ws.settimeout(0.2)
        try:
            opcode, data = ws.recv_data(control_frame=True)
        except websocket.WebSocketTimeoutException:
            continue
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            ws.shutdown()
            return struct.unpack("!H", data[:2])[0], data[2:].decode(), messages, time.monotonic() - started
        if opcode == websocket.ABNF.OPCODE_TEXT:
            messages.append(orjson.loads(data))
    raise AssertionError(f"still open after {limit} s")


def test_active_messages_cannot_hold_a_stream_open_past_the_session_limit(tight_server, service) -> None:
    web = tight_server(ANALYTICS_WS_IDLE_SECONDS="1", ANALYTICS_WS_MAX_SESSION_SECONDS="3")
    read_key, _ = service.access.create("read")
    results: dict[str, Any] = {}

    def run(name: str, raw: str) -> None:
        results[name] = keep_sending(connect(web, read_key), raw, 15)

    threads = [
        threading.Thread(target=run, args=("active", '{"action": "active"}')),
        # Only invalid messages: they are not activity.
        threading.Thread(target=run, args=("noisy", '{"action": "wake up"}')),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    code, reason, messages, after = results["noisy"]
    assert code == 4408 and "idle" in reason and after < 3
    assert messages and all(m["kind"] == "error" for m in messages)
    code, reason, messages, after = results["active"]
    assert code == 4408 and "time limit" in reason and after >= 2.5
    assert messages == []


def test_a_key_without_phi_access_receives_events_redacted(server, service) -> None:
    full_key, _ = service.access.create("read")
    redacted_key, _ = service.access.create("read", phi=False)
    ingest_key, _ = service.access.create("ingest")
    full, redacted = connect(server, full_key), connect(server, redacted_key)
    for ws in (full, redacted):
        subscribe(ws, events=["custom"])
    post(server, ingest_key, {"type": "custom", "userId": "patient-77@example.com", "properties": {"note": "x-ray"}})
    [seen] = receive(full, 1)
    [hidden] = receive(redacted, 1)
    assert seen["data"]["userId"] == "patient-77@example.com" and seen["data"]["properties"]["note"] == "x-ray"
    assert hidden["data"]["id"] == seen["data"]["id"]
    text = orjson.dumps(hidden).decode()
    assert "patient-77" not in text and "x-ray" not in text
    full.close()
    redacted.close()
