"""``WS /v1/stream``: live events and metric updates (flask-sock).

The fan-out itself is :class:`analytics.live.hub.LiveHub` (one per process,
started on the first connection). This module authenticates, runs one
connection's loop and writes its frames.

One connection, in its own gunicorn thread:

* auth: ``?token=KEY`` or ``Authorization: Bearer KEY``; the key must allow
  ``read``. Missing or bad: close ``1008`` at once, counted as an
  authentication failure.
* loop: sleep until the hub has frames (written in one ``sendall``), the
  client sent a message (``subscribe``, ``active``) or went away, or the hub
  asks to close (``1013``: too slow, ``1001``: server restarting); nothing
  wakes an idle connection but its idle clock, so idle clients cost no CPU.
* pings every ``ANALYTICS_WS_PING_SECONDS`` (simple-websocket's pinger): a
  peer that has not answered the previous ping is dropped (``1008``
  "Ping/Pong timeout"), and idle proxies keep the connection open.
* automatic logoff: a client that sends no valid message for
  ``ANALYTICS_WS_IDLE_SECONDS`` is closed with ``4408`` ("idle timeout").
  Pongs and invalid messages do not count: they prove the machine is there,
  not the person. The dashboard sends ``{"action": "active"}`` while someone
  uses it; since a program can send that forever too, a stream is also
  closed with ``4408`` ``ANALYTICS_WS_MAX_SESSION_SECONDS`` after it opened,
  and the person has to give the key again.
* revocation: the hub closes a client whose key is revoked (or whose user is
  erased) with ``1008``, its waiting frames dropped (see
  :mod:`analytics.live.hub`).
* errors: an invalid client message is answered with an error frame that
  names only the protocol's own fields; an unexpected failure closes the
  stream with ``1011``, never an HTTP 500 written into the socket.
"""

from __future__ import annotations

import logging
import signal
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import orjson
import redis
from flask import Flask, current_app, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from analytics.errors import (
    AuthenticationError,
    PermissionDenied,
    StoreUnavailable,
    ValidationError,
)
from analytics.live.hub import CLOSE_GOING_AWAY, CLOSE_POLICY, LiveClient, LiveHub, parse_client_message
from analytics.privacy.apikeys import ApiKey
from analytics.processing.service import consumer_name
from web.auth import bearer_token
from web.extensions import get_analytics

log = logging.getLogger(__name__)

sock = Sock()
#: The hubs of this process (one per app), for the SIGTERM handler.
_HUBS: weakref.WeakSet[LiveHub] = weakref.WeakSet()

CLOSE_UNAVAILABLE = 1011
CLOSE_IDLE = 4408
#: Longest a connection thread sleeps when nothing wakes it: only a safety
#: net, every cause for work wakes it (see :class:`_InputEvent`).
MAX_SLEEP_SECONDS = 30.0


class _InputEvent(threading.Event):
    """simple-websocket's "a message, or the end, arrived" event, which also
    wakes the connection's loop (``wake``), so that the loop sleeps on one
    wait for both the hub's frames and the client's input instead of
    looking at the client every fraction of a second (1,000 idle clients
    looked at four times a second took 16% of a core)."""

    wake: Callable[[], None] | None = None

    def set(self) -> None:
        super().set()
        wake = self.wake
        if wake is not None:
            wake()


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked WebSocket text frame (server to client).

    Built once per message by the hub and shared by every client. Sent
    uncompressed (RSV1 clear), which RFC 7692 allows even when
    permessage-deflate was negotiated.
    """
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def json_frame(kind: str, data: Any) -> bytes:
    return text_frame(orjson.dumps({"kind": kind, "data": data}))


def init_app(app: Flask) -> None:
    settings = app.config["ANALYTICS_SETTINGS"]
    service = app.extensions["analytics"]
    options = app.config.setdefault(
        "SOCK_SERVER_OPTIONS",
        {
            "ping_interval": settings.ws_ping_seconds or None,
            "max_message_size": 64 * 1024,
        },
    )
    options["event_class"] = _InputEvent
    hub = LiveHub(
        service.redis,
        service.codec,
        text_frame,
        metric_interval=settings.ws_metric_interval,
        process_name=consumer_name,
    )
    app.extensions["live"] = hub
    _HUBS.add(hub)
    sock.init_app(app)


def get_hub() -> LiveHub:
    return current_app.extensions["live"]


def _authenticate(hub: LiveHub) -> ApiKey | None:
    token = request.args.get("token") or bearer_token()
    service = get_analytics()
    try:
        # ``where`` makes authenticate() count and audit a bad or missing key.
        key = service.access.authenticate(token, where="websocket", remote=request.remote_addr)
    except AuthenticationError:
        hub.counters.add(auth_failures=1)
        return None
    try:
        key.require("read")
    except PermissionDenied:
        service.access.audit_failure("websocket", request.remote_addr, "forbidden")
        hub.counters.add(auth_failures=1)
        return None
    return key


@sock.route("/v1/stream")
def stream(ws: Any) -> None:
    hub = get_hub()
    hub.ensure_started()
    try:
        key = _authenticate(hub)
    except StoreUnavailable:
        hub.counters.add(errors=1)
        ws.close(CLOSE_UNAVAILABLE, "data store unavailable; retry later")
        return
    if key is None:
        ws.close(CLOSE_POLICY, "authentication failed: a read key is required")
        return
    try:
        Connection(ws, hub, key).run()
    except ConnectionClosed:
        raise
    except Exception as exc:  # noqa: BLE001 - Flask would write a 500 into the upgraded socket
        # Only the type: the failure may concern a message carrying PHI.
        log.error("WebSocket stream failed (%s)", type(exc).__name__)
        hub.counters.add(errors=1)
        try:
            ws.close(CLOSE_UNAVAILABLE, "internal error; reconnect")
        except Exception:  # noqa: BLE001 - the peer may be gone already
            pass


class _SerializedWrites:
    """A socket whose writes never interleave.

    Two threads write to a connection: its own loop (our frames) and
    simple-websocket's reader thread (pings, pongs, the close reply). A
    blocking send to a slow peer can be split, so without a lock a ping
    could land inside one of our frames. Everything else (recv, fileno,
    shutdown: the hub's abort must not wait for a stuck writer) passes
    through.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        with self._lock:
            self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Connection:
    """One client's loop (see the module docs)."""

    def __init__(self, ws: Any, hub: LiveHub, key: ApiKey) -> None:
        settings = get_analytics().settings
        ws.sock = _SerializedWrites(ws.sock)
        self.ws = ws
        self.hub = hub
        self.key = key
        self.idle_seconds = settings.ws_idle_seconds
        self.max_session = settings.ws_max_session_seconds
        self.client = LiveClient(
            key.id, key.user_hash, settings.ws_buffer, abort=self._abort, reveal_phi=key.reveal_phi
        )

    def _abort(self) -> None:
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, frames: list[bytes]) -> None:
        self.ws.sock.sendall(frames[0] if len(frames) == 1 else b"".join(frames))
        self.hub.counters.add(messages=len(frames))
        self.client.delivered += len(frames)

    def run(self) -> None:
        service = get_analytics()
        try:
            # The stream reveals PHI: no audit entry, no stream.
            service.privacy.record("stream.open", self.key.id, scope="user" if self.key.user_hash else "all")
        except redis.RedisError:
            self.hub.counters.add(errors=1)
            self.ws.close(CLOSE_UNAVAILABLE, "data store unavailable; retry later")
            return
        self.hub.register(self.client)
        heard = opened = time.monotonic()
        reason = "client closed"
        self.ws.event.wake = self.client.wake
        self.client.wake()  # for input that came before wake was set
        try:
            while True:
                frames, closing = self.client.take(self._sleep(heard, opened))
                if frames:
                    self._send(frames)
                if closing is not None:
                    reason = closing[1]
                    self.ws.close(*closing)
                    break
                if self._read_messages():
                    heard = time.monotonic()
                if not self.ws.connected:
                    break
                if self.idle_seconds and time.monotonic() - heard >= self.idle_seconds:
                    reason = "idle timeout"
                    self.ws.close(
                        CLOSE_IDLE, f"idle timeout: no client message for {self.idle_seconds:g} s (automatic logoff)"
                    )
                    break
                if self.max_session and time.monotonic() - opened >= self.max_session:
                    reason = "time limit"
                    self.ws.close(
                        CLOSE_IDLE,
                        f"time limit: open for {self.max_session:g} s (automatic logoff); give the key again",
                    )
                    break
        except ConnectionClosed:
            pass
        except OSError as exc:
            # The peer went away mid-write, or the hub shut the socket down.
            self.hub.counters.add(errors=1)
            reason = f"write failed ({type(exc).__name__})"
        finally:
            self.hub.unregister(self.client)
            try:
                service.privacy.record("stream.close", self.key.id, delivered=self.client.delivered, reason=reason)
            except Exception as exc:  # noqa: BLE001 - the stream is over either way
                log.warning("could not audit a stream's end (%s)", type(exc).__name__)

    def _sleep(self, heard: float, opened: float) -> float:
        """How long the loop may sleep: until the idle clock or the session
        limit runs out."""
        now = time.monotonic()
        left = MAX_SLEEP_SECONDS
        if self.idle_seconds:
            left = min(left, self.idle_seconds - (now - heard))
        if self.max_session:
            left = min(left, self.max_session - (now - opened))
        return max(0.0, left)

    def _read_messages(self) -> bool:
        """Handle every message the client sent; ``True`` if there was a
        valid one (an invalid one does not hold the idle logoff off)."""
        heard = False
        while True:
            raw = self.ws.receive(timeout=0)
            if raw is None:
                return heard
            try:
                message = parse_client_message(raw)
            except ValidationError as exc:
                # Its details name only the protocol's fields, in fixed words.
                self._send([json_frame("error", {"message": exc.message, "details": exc.details})])
                continue
            heard = True
            if message["action"] == "subscribe":
                self.client.subscribe(message["events"], message["metrics"])
                self._send(
                    [
                        json_frame(
                            "subscribed",
                            {
                                "events": sorted(message["events"]) if message["events"] is not None else ["*"],
                                "metrics": sorted(message["metrics"]) if message["metrics"] is not None else ["*"],
                            },
                        )
                    ]
                )


def close_streams_on_sigterm() -> None:
    """Chain a SIGTERM handler that closes every stream of this process with
    1001 "server restarting" before the server's own handler runs (called by
    ``gunicorn.conf.py`` in each worker)."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        for hub in list(_HUBS):
            hub.close_all(CLOSE_GOING_AWAY, "server restarting; reconnect")
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
