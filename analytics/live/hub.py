"""Live fan-out: from Redis pub/sub to the WebSocket clients of one process.

Workers publish what they just stored: the event commit script publishes
each batch of records on ``analytics:live:events`` (a msgpack array of
type, blobs, type, blobs..., each blobs the records one page got, one after
another, :func:`analytics.events.codec.live_records`; a JSON array of record
dicts is read too), the metric rollups publish updated buckets on
``analytics:live:metrics`` (a JSON array of ``{"name", "tags", "bucket",
"resolution", "count", "sum", "min", "max"}``). Every web process runs one
:class:`LiveHub`: a single background thread subscribed to both channels,
which decodes each record once, frames each message once, and hands the
frames to the clients that may and want to see them. So a client on any web
process receives events ingested through any other and processed by any
worker.

Per client (:class:`LiveClient`):

* **scope**: a key scoped to a user receives only events whose user hash
  (record ``u``, a keyed hash, never the clear id) is the key's; it receives
  no metrics, which aggregate every user's data. Unscoped keys see all.
* **subscription**: ``{"action": "subscribe", "events": [...], "metrics":
  [...]}`` replaces the client's filter; a list holding ``"*"`` means all of
  that kind, an absent list none. Before any subscription: everything.
* **bounded buffer**: frames wait in a per-client buffer of at most
  ``ANALYTICS_WS_BUFFER`` messages. The hub never blocks on a client: a
  client whose buffer is full is dropped (close ``1013`` with a reason) and
  the others go on. If its socket does not even take the close frame within
  :data:`ABORT_GRACE` seconds, the socket is shut down.
* **metric throttle**: at most one update per series (name, tags,
  resolution, bucket) per ``ANALYTICS_WS_METRIC_INTERVAL`` seconds; updates
  in between are coalesced and the latest is sent when the interval ends,
  so the last state of a bucket is never lost.

The thread also writes this process's WebSocket figures
(:mod:`analytics.live.stats`) every two seconds. If Redis goes away it says
so in one line, retries with backoff and resubscribes; messages published
meanwhile are not replayed (the stream is live; history is ``GET
/v1/events``).

Why one module of over 400 lines: the hub, its clients and their
subscriptions share one lock and one threading discipline (the listener
thread writes, request threads read); split apart, the invariants about who
may touch what under the lock would live in two files.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import marshmallow
import orjson
import redis
from marshmallow import fields, validate

from analytics import keyspace
from analytics.errors import ValidationError
from analytics.events.codec import RecordCodec, live_records
from analytics.live.stats import STATS_INTERVAL, WsCounters, write_ws_stats
from analytics.redis_client import TRANSIENT_ERRORS

log = logging.getLogger(__name__)

#: Seconds a dropped client's socket gets to take its close frame.
ABORT_GRACE = 10.0
#: Close code of a client dropped because it reads too slowly.
CLOSE_TOO_SLOW = 1013
#: Close code sent when the server shuts down (clients should reconnect).
CLOSE_GOING_AWAY = 1001

ALL = "*"


class _ClientMessageSchema(marshmallow.Schema):
    class Meta:
        unknown = marshmallow.RAISE

    action = fields.String(required=True, validate=validate.OneOf(["subscribe", "active"]))
    events = fields.List(
        fields.String(validate=validate.Length(1, 200)), validate=validate.Length(max=500), load_default=None
    )
    metrics = fields.List(
        fields.String(validate=validate.Length(1, 200)), validate=validate.Length(max=500), load_default=None
    )


_client_message_schema = _ClientMessageSchema()


def parse_client_message(raw: str | bytes) -> dict[str, Any]:
    """A client's message, validated: ``action`` and for ``subscribe`` the
    ``events`` and ``metrics`` filters (``None`` meaning all)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValidationError("message is not JSON", {"_schema": ["Send a JSON object."]}) from None
    try:
        message = _client_message_schema.load(data if isinstance(data, dict) else {"_": data})
    except marshmallow.ValidationError as exc:
        raise ValidationError("invalid message", exc.normalized_messages()) from None
    for kind in ("events", "metrics"):
        names = message.get(kind)
        message[kind] = None if names is not None and ALL in names else frozenset(names or ())
    return message


class LiveClient:
    """One connected client: what it may and wants to see, and its buffer.

    ``offer`` is called by the hub thread, ``take`` by the client's own
    connection thread; they meet under one condition variable.
    """

    def __init__(self, key_id: str, user_hash: str, max_buffer: int, abort: Callable[[], None] | None = None) -> None:
        self.key_id = key_id
        self.user_hash = user_hash
        self.max_buffer = max_buffer
        self.abort = abort
        #: ``None``: every type (or metric); else the subscribed names.
        self.events: frozenset[str] | None = None
        self.metrics: frozenset[str] | None = None
        self._cond = threading.Condition()
        self._frames: collections.deque[bytes] = collections.deque()
        self._closing: tuple[int, str] | None = None
        self._woken = False
        self.closing_since = 0.0
        self.delivered = 0
        # Metric throttle state, touched only by the hub thread.
        self.metric_sent: dict[tuple[Any, ...], float] = {}
        self.metric_waiting: dict[tuple[Any, ...], bytes] = {}

    def subscribe(self, events: frozenset[str] | None, metrics: frozenset[str] | None) -> None:
        self.events, self.metrics = events, metrics

    def wants_event(self, event_type: str, user_hash: str) -> bool:
        if self.user_hash and user_hash != self.user_hash:
            return False
        return self.events is None or event_type in self.events

    def wants_metric(self, name: str) -> bool:
        if self.user_hash:
            return False
        return self.metrics is None or name in self.metrics

    def offer(self, frames: list[bytes]) -> bool:
        """Queue ``frames``; ``False`` if that overflowed the buffer (the
        client is then being closed with 1013)."""
        with self._cond:
            if self._closing is not None:
                return True
            if len(self._frames) + len(frames) > self.max_buffer:
                self._frames.clear()
                self._close(CLOSE_TOO_SLOW, f"client too slow: more than {self.max_buffer} messages waiting; reconnect")
                return False
            self._frames.extend(frames)
            self._cond.notify()
            return True

    def close(self, code: int, reason: str) -> None:
        """Ask the connection thread to close with ``code``."""
        with self._cond:
            if self._closing is None:
                self._close(code, reason)

    def _close(self, code: int, reason: str) -> None:
        self._closing = (code, reason)
        self.closing_since = time.monotonic()
        self._cond.notify()

    def wake(self) -> None:
        """Make a waiting :meth:`take` return now: something other than
        frames needs the connection thread (its client sent a message, or the
        connection dropped)."""
        with self._cond:
            self._woken = True
            self._cond.notify()

    def take(self, timeout: float) -> tuple[list[bytes], tuple[int, str] | None]:
        """Wait up to ``timeout`` s for frames (or :meth:`wake`); returns them
        and, when the client must be closed, ``(code, reason)``."""
        with self._cond:
            if not self._frames and self._closing is None and not self._woken:
                self._cond.wait(timeout)
            self._woken = False
            frames = list(self._frames)
            self._frames.clear()
            return frames, self._closing

    @property
    def closing(self) -> tuple[int, str] | None:
        return self._closing


def _metric_key(item: dict[str, Any]) -> tuple[Any, ...]:
    tags = item.get("tags") or {}
    return (item.get("name"), tuple(sorted(tags.items())), item.get("resolution"), item.get("bucket"))


class LiveHub:
    """The fan-out of one process (see the module docs).

    ``encode`` turns a JSON message into what is written to a client's
    socket (a WebSocket text frame): done once per message, shared by every
    client that gets it.
    """

    def __init__(
        self,
        client: redis.Redis,
        codec: RecordCodec,
        encode: Callable[[bytes], bytes],
        *,
        metric_interval: float = 1.0,
        process_name: Callable[[], str] | None = None,
    ) -> None:
        self.redis = client
        self.codec = codec
        self.encode = encode
        self.metric_interval = metric_interval
        self.counters = WsCounters()
        self._process_name = process_name or (lambda: f"{os.uname().nodename}-{os.getpid()}")
        self._clients: set[LiveClient] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._next_stats = 0.0
        self._next_flush = 0.0
        self.subscribed = threading.Event()

    # -- lifecycle -----------------------------------------------------------
    def ensure_started(self) -> None:
        """Start the hub thread in this process if it is not running (lazily:
        gunicorn forks after import, and threads do not survive a fork)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            if self._pid != os.getpid():
                self._clients = set()  # a forked copy: those clients are the parent's
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="analytics-live", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server restarting") -> None:
        for client in self.clients():
            client.close(code, reason)

    def register(self, client: LiveClient) -> None:
        with self._lock:
            self._clients.add(client)
        self.counters.add(clients=1)

    def unregister(self, client: LiveClient) -> None:
        with self._lock:
            if client not in self._clients:
                return
            self._clients.discard(client)
        self.counters.add(clients=-1)

    def clients(self) -> list[LiveClient]:
        with self._lock:
            return list(self._clients)

    # -- the thread ----------------------------------------------------------
    def _run(self) -> None:
        down_since: float | None = None
        delay = 0.25
        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keyspace.LIVE_EVENTS, keyspace.LIVE_METRICS)
                if down_since is not None:
                    log.warning(
                        "live fan-out reached Redis again after %.0f s; streaming resumes",
                        time.monotonic() - down_since,
                    )
                    down_since = None
                delay = 0.25
                self.subscribed.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.05)
                    if message is not None:
                        self.handle(message["channel"], message["data"])
                    self.housekeeping()
            except TRANSIENT_ERRORS as exc:
                self.subscribed.clear()
                if down_since is None:
                    down_since = time.monotonic()
                    log.error("live fan-out cannot reach Redis (%s); retrying with backoff", type(exc).__name__)
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not self._stop.is_set():
                    self.housekeeping()
                    self._stop.wait(0.1)
                delay = min(delay * 2, 5.0)
            except Exception as exc:  # noqa: BLE001 - the hub must outlive one bad message
                # Only the type: a message may carry PHI.
                log.error("live fan-out error (%s); resubscribing", type(exc).__name__)
                self.counters.add(errors=1)
                self._stop.wait(0.5)
            finally:
                try:
                    pubsub.close()
                except redis.RedisError:
                    pass

    def handle(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        try:
            if name == keyspace.LIVE_EVENTS and isinstance(data, bytes) and data[:1] != b"[":
                # The commit script's msgpack form (a JSON array of records
                # is read too: tools and tests publish those).
                if not self.clients():
                    return
                self.dispatch_events(live_records(data))
                return
            items = orjson.loads(data)
        except (ValueError, TypeError, KeyError, IndexError):
            self.counters.add(errors=1)
            log.error("unreadable message on %s", name)
            return
        if not isinstance(items, list):
            items = [items]
        if name == keyspace.LIVE_EVENTS:
            self.dispatch_events(items)
        elif name == keyspace.LIVE_METRICS:
            self.dispatch_metrics(items)

    def _deliver(self, batches: dict[LiveClient, list[bytes]]) -> None:
        for client, frames in batches.items():
            if not client.offer(frames):
                self.counters.add(errors=1)
                log.warning(
                    "dropping a slow WebSocket client (key %s): buffer of %d messages full",
                    client.key_id,
                    client.max_buffer,
                )

    def dispatch_events(self, records: Iterable[dict[str, Any]]) -> None:
        """Decode each record once and queue it for the clients that see it.

        Clients with the same filter and scope form a group that shares one
        list of frames: the per-event work grows with the number of distinct
        filters, not of clients.
        """
        groups: dict[tuple[frozenset[str] | None, str], list[LiveClient]] = {}
        for client in self.clients():
            groups.setdefault((client.events, client.user_hash), []).append(client)
        if not groups:
            return
        shared: dict[tuple[frozenset[str] | None, str], list[bytes]] = {g: [] for g in groups}
        for record in records:
            event_type, user_hash = record.get("t", ""), record.get("u", "")
            frame = b""
            for group, frames in shared.items():
                events, scope = group
                if (scope and scope != user_hash) or (events is not None and event_type not in events):
                    continue
                if not frame:
                    try:
                        event = self.codec.decode(record, reveal_phi=True)
                    except Exception as exc:  # noqa: BLE001 - one bad record must not stop the stream
                        self.counters.add(errors=1)
                        log.error("could not decode a live record (%s)", type(exc).__name__)
                        break
                    frame = self.encode(orjson.dumps({"kind": "event", "data": event}))
                frames.append(frame)
        self._deliver(
            {client: shared[group] for group, members in groups.items() for client in members if shared[group]}
        )

    def dispatch_metrics(self, items: Iterable[dict[str, Any]]) -> None:
        """Queue updated metric buckets, throttled per series and client."""
        clients = [c for c in self.clients() if not c.user_hash]
        if not clients:
            return
        now = time.monotonic()
        batches: dict[LiveClient, list[bytes]] = {}
        for item in items:
            name = item.get("name")
            if not isinstance(name, str):
                continue
            targets = [c for c in clients if c.wants_metric(name)]
            if not targets:
                continue
            data = {k: item.get(k) for k in ("name", "tags", "bucket", "resolution", "count", "sum", "min", "max")}
            frame = self.encode(orjson.dumps({"kind": "metric", "data": data}))
            key = _metric_key(item)
            for client in targets:
                if now - client.metric_sent.get(key, -1e9) >= self.metric_interval:
                    client.metric_sent[key] = now
                    client.metric_waiting.pop(key, None)
                    batches.setdefault(client, []).append(frame)
                else:
                    client.metric_waiting[key] = frame  # coalesce: keep the latest
        self._deliver(batches)

    def flush_metrics(self, now: float) -> None:
        """Send the coalesced metric updates whose interval has passed."""
        batches: dict[LiveClient, list[bytes]] = {}
        for client in self.clients():
            if client.metric_waiting:
                for key, frame in list(client.metric_waiting.items()):
                    if now - client.metric_sent.get(key, -1e9) >= self.metric_interval:
                        client.metric_sent[key] = now
                        del client.metric_waiting[key]
                        batches.setdefault(client, []).append(frame)
            if len(client.metric_sent) > 1000:
                # Forget series quiet for a while, so the map stays small.
                for key, sent in list(client.metric_sent.items()):
                    if now - sent > 10 * self.metric_interval and key not in client.metric_waiting:
                        del client.metric_sent[key]
        self._deliver(batches)

    def housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_flush:
            self._next_flush = now + min(0.1, self.metric_interval / 4)
            self.flush_metrics(now)
            for client in self.clients():
                # A client that did not take its close frame in time: its
                # socket is stuck (peer not reading); shut it down.
                if client.closing is not None and now - client.closing_since > ABORT_GRACE:
                    if client.abort is not None:
                        client.abort()
                    self.unregister(client)
        if now >= self._next_stats:
            self._next_stats = now + STATS_INTERVAL
            self.write_stats()

    def write_stats(self) -> None:
        try:
            write_ws_stats(self.redis, self._process_name(), self.counters.snapshot())
        except redis.RedisError as exc:
            log.debug("could not write WebSocket figures (%s)", type(exc).__name__)
