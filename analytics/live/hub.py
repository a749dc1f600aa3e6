"""Live fan-out: from Redis pub/sub to the WebSocket clients of one process.

Workers publish what they just stored: the event commit script publishes
each batch of records on ``analytics:live:events`` (a msgpack array of
type, blobs, type, blobs..., each blobs the records one page got, one after
another, :func:`analytics.events.codec.live_records`; a JSON array of record
dicts is read too), the metric rollups publish updated buckets on
``analytics:live:metrics`` (a JSON array of ``{"name", "tags", "bucket",
"resolution", "count", "sum", "min", "max"}``; live anomaly detection
adds ``{"kind": "anomaly", ...}`` and ``{"kind": "alert", ...}`` items,
sent to the clients of that metric unthrottled). Every web process runs one
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

Revocation: :meth:`analytics.privacy.access.AccessService.revoke` and
erasure publish the revoked key ids and erased user hashes on
``analytics:live:revoked`` (:func:`analytics.privacy.access.publish_revocation`);
the same thread closes the clients opened with them (``1008``) as the
message arrives, their waiting frames discarded. As a safety net for a
message missed (Redis reconnecting), it also re-reads the key record of
every client every :data:`KEY_CHECK_INTERVAL` seconds, and at once after a
reconnect, and closes those whose key is revoked, expired or gone.

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

import orjson
import redis

from analytics import keyspace
from analytics.errors import ValidationError
from analytics.events.codec import RecordCodec, live_records
from analytics.live.stats import STATS_INTERVAL, WsCounters, write_ws_stats
from analytics.privacy.apikeys import parse_record
from analytics.redis_client import TRANSIENT_ERRORS

log = logging.getLogger(__name__)

#: Seconds a dropped client's socket gets to take its close frame.
ABORT_GRACE = 10.0
#: Close code of a client dropped because it reads too slowly.
CLOSE_TOO_SLOW = 1013
#: Close code sent when the server shuts down (clients should reconnect).
CLOSE_GOING_AWAY = 1001
#: Close code of a client whose key was revoked (or whose user was erased).
CLOSE_POLICY = 1008
#: Seconds between two re-reads of the connected clients' keys (the safety
#: net behind the revocation channel).
KEY_CHECK_INTERVAL = 2.0
#: Seconds a revocation is remembered, for a client that authenticated just
#: before it and registers just after.
REVOKED_MEMORY = 60.0

ALL = "*"


#: What each name list may hold (fixed text: an error frame never echoes
#: the client's input, which may be anything, PHI included).
_NAMES_RULE = "A list of at most 500 names, each a string of 1 to 200 characters."
_MAX_NAMES = 500
_MAX_NAME_LENGTH = 200
_FIELDS = frozenset({"action", "events", "metrics"})


def _names(value: Any) -> frozenset[str] | None:
    """A validated name list: ``None`` for all (``"*"``); raises ``ValueError``."""
    if value is None:
        return frozenset()
    if not isinstance(value, list) or len(value) > _MAX_NAMES:
        raise ValueError
    for name in value:
        if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME_LENGTH:
            raise ValueError
    return None if ALL in value else frozenset(value)


def parse_client_message(raw: str | bytes) -> dict[str, Any]:
    """A client's message, validated: ``action`` and for ``subscribe`` the
    ``events`` and ``metrics`` filters (``None`` meaning all).

    A :class:`ValidationError` names only our own fields with fixed
    messages: nothing the client sent (unknown field names, bad values) is
    repeated back, and no input makes it fail otherwise.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValidationError("message is not JSON", {"_schema": ["Send a JSON object."]}) from None
    if not isinstance(data, dict):
        raise ValidationError("invalid message", {"_schema": ["Send a JSON object."]})
    errors: dict[str, list[str]] = {}
    if not _FIELDS.issuperset(data):
        errors["_schema"] = ["Unknown field: only action, events and metrics are read."]
    action = data.get("action")
    if action not in ("subscribe", "active"):
        errors["action"] = ['Required: "subscribe" or "active".']
    message: dict[str, Any] = {"action": action}
    for kind in ("events", "metrics"):
        try:
            message[kind] = _names(data.get(kind))
        except ValueError:
            errors[kind] = [_NAMES_RULE]
    if errors:
        raise ValidationError("invalid message", errors)
    return message


class LiveClient:
    """One connected client: what it may and wants to see, and its buffer.

    ``offer`` is called by the hub thread, ``take`` by the client's own
    connection thread; they meet under one condition variable.
    """

    def __init__(
        self,
        key_id: str,
        user_hash: str,
        max_buffer: int,
        abort: Callable[[], None] | None = None,
        *,
        reveal_phi: bool = True,
    ) -> None:
        self.key_id = key_id
        self.user_hash = user_hash
        #: Whether the key may see sealed values (else they are redacted).
        self.reveal_phi = reveal_phi
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

    def close(self, code: int, reason: str, *, discard: bool = False) -> None:
        """Ask the connection thread to close with ``code``; with
        ``discard``, the frames still waiting are dropped (a revoked key
        gets nothing more)."""
        with self._cond:
            if discard:
                self._frames.clear()
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


#: Clients sharing the frames of an event: filter, user scope, PHI visible.
_Group = tuple[frozenset[str] | None, str, bool]


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
        self._next_key_check = 0.0
        #: Revoked key ids and erased user hashes -> when heard (monotonic).
        self._revoked: dict[str, float] = {}
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
            # Revoked between its authentication and now: the notice came
            # before the client was here to be closed.
            revoked = client.key_id in self._revoked or (client.user_hash and client.user_hash in self._revoked)
        self.counters.add(clients=1)
        if revoked:
            client.close(CLOSE_POLICY, "key revoked", discard=True)

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
                pubsub.subscribe(keyspace.LIVE_EVENTS, keyspace.LIVE_METRICS, keyspace.LIVE_REVOKED)
                # Revocations published while unsubscribed are lost: re-read
                # every client's key now rather than at the next check.
                self._next_key_check = 0.0
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
        if name == keyspace.LIVE_REVOKED:
            if isinstance(items, dict):
                self.revoke(items.get("keys") or (), items.get("users") or ())
            return
        if not isinstance(items, list):
            items = [items]
        if name == keyspace.LIVE_EVENTS:
            self.dispatch_events(items)
        elif name == keyspace.LIVE_METRICS:
            self.dispatch_metrics(items)

    # -- revocation ------------------------------------------------------------
    def revoke(self, key_ids: Iterable[str], user_hashes: Iterable[str] = ()) -> int:
        """Close (1008) the clients opened with one of ``key_ids`` or scoped
        to one of ``user_hashes``; returns how many."""
        now = time.monotonic()
        keys = {k for k in key_ids if isinstance(k, str) and k}
        users = {u for u in user_hashes if isinstance(u, str) and u}
        with self._lock:
            for name in keys | users:
                self._revoked[name] = now
            for name, heard in list(self._revoked.items()):
                if now - heard > REVOKED_MEMORY:
                    del self._revoked[name]
        closed = 0
        for client in self.clients():
            if client.key_id in keys:
                reason = "key revoked"
            elif client.user_hash and client.user_hash in users:
                reason = "access revoked: user erased"
            else:
                continue
            if client.closing is None:
                closed += 1
            client.close(CLOSE_POLICY, reason, discard=True)
        if closed:
            log.info("closed %d WebSocket client(s) after a revocation", closed)
        return closed

    def check_keys(self) -> int:
        """Re-read the key record of every open client (two round trips for
        all of them) and close those whose key is revoked, expired or gone:
        the safety net behind the revocation channel (and how an expiry
        reaches an open stream). Returns how many."""
        clients = [c for c in self.clients() if c.closing is None]
        if not clients:
            return 0
        ids = sorted({c.key_id for c in clients})
        digests = dict(zip(ids, self.redis.hmget(keyspace.API_KEY_IDS, ids), strict=True))
        known = sorted({d for d in digests.values() if d is not None})
        records = dict(zip(known, self.redis.hmget(keyspace.API_KEYS, known), strict=True)) if known else {}
        revoked = []
        for key_id, digest in digests.items():
            raw = records.get(digest) if digest is not None else None
            try:
                key = parse_record(raw) if raw is not None else None
                valid = key is not None and not key.revoked and not key.expired()
            except (ValueError, TypeError):
                valid = False
            if not valid:
                revoked.append(key_id)
        return self.revoke(revoked) if revoked else 0

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
        """Decode each record once per visibility (PHI revealed or
        redacted) and queue it for the clients that see it.

        Clients with the same filter, scope and visibility form a group that
        shares one list of frames: the per-event work grows with the number
        of distinct filters, not of clients.
        """
        groups: dict[_Group, list[LiveClient]] = {}
        for client in self.clients():
            if client.closing is None:
                groups.setdefault((client.events, client.user_hash, client.reveal_phi), []).append(client)
        if not groups:
            return
        shared: dict[_Group, list[bytes]] = {g: [] for g in groups}
        for record in records:
            event_type, user_hash = record.get("t", ""), record.get("u", "")
            frames_of: dict[bool, bytes] = {}
            for group, frames in shared.items():
                events, scope, reveal = group
                if (scope and scope != user_hash) or (events is not None and event_type not in events):
                    continue
                frame = frames_of.get(reveal)
                if frame is None:
                    try:
                        event = self.codec.decode(record, reveal_phi=reveal)
                    except Exception as exc:  # noqa: BLE001 - one bad record must not stop the stream
                        self.counters.add(errors=1)
                        log.error("could not decode a live record (%s)", type(exc).__name__)
                        frames_of[reveal] = b""
                        continue
                    frame = frames_of[reveal] = self.encode(orjson.dumps({"kind": "event", "data": event}))
                if frame:
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
            kind = item.get("kind")
            if kind in ("anomaly", "alert"):
                # Found once per bucket by live detection: sent as they come, never coalesced.
                frame = self.encode(
                    orjson.dumps({"kind": kind, "data": {k: v for k, v in item.items() if k != "kind"}})
                )
                for client in targets:
                    batches.setdefault(client, []).append(frame)
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
        if now >= self._next_key_check:
            self._next_key_check = now + KEY_CHECK_INTERVAL
            try:
                self.check_keys()
            except redis.RedisError as exc:
                log.debug("could not re-read the streams' keys (%s)", type(exc).__name__)

    def write_stats(self) -> None:
        try:
            write_ws_stats(self.redis, self._process_name(), self.counters.snapshot())
        except redis.RedisError as exc:
            log.debug("could not write WebSocket figures (%s)", type(exc).__name__)
