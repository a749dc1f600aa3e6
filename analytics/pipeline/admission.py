"""Admitting an ingest request and queueing what it brings in one Redis
round trip.

The general path takes two: :meth:`AccessService.authenticate` (key
lookup and token bucket, :mod:`analytics.privacy.ratelimit`), then a ``MULTI`` with
the queue entries. For a request whose entries are already validated and
encoded (no I/O needed: events, metric samples, Segment messages and their
dead letters), ``lua/admit_events.lua`` does both: it looks the key up,
takes a token, checks revocation, the rate and the role in the same order
as the general path, and only when all pass writes every entry and the
"processing task queued" flag. A refused request writes nothing but its
token, as before.

The script carries a ``#!lua`` shebang: Redis then refuses it as a whole,
before it runs, when ``maxmemory`` is reached, so a full Redis never leaves
part of a request queued (and the 503 means nothing was accepted).

With ``ANALYTICS_MIN_REPLICAS`` above 0, ``WAIT min_replicas timeout``
follows the script on the same connection, sent in the same write (still
one round trip): its answer, how many replicas have this connection's
writes, goes back with the verdict (:attr:`Admission.replicas`), and the
intake refuses to call the request accepted when it is short. The general
path's write (:meth:`Admitter.queue`) is a ``MULTI``/``EXEC`` followed by
the same ``WAIT``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, NamedTuple

import redis

from analytics import keyspace
from analytics.lua_scripts import lua_source
from analytics.privacy.apikeys import GRANTS
from analytics.privacy.ratelimit import RateLimiter, retry_after_seconds
from analytics.redis_client import DedicatedConnections, resp_bulk

#: One entry to add: the stream, and its field/value pairs.
StreamEntry = tuple[str, dict[Any, Any]]


class Verdict(enum.IntEnum):
    """What the script decided (its first reply)."""

    UNKNOWN = 0
    QUEUED = 1
    REVOKED = 2
    RATE_LIMITED = 3
    FORBIDDEN = 4


#: The script's verdict codes, by value: indexing costs less than ``Verdict(n)``.
_VERDICTS = tuple(sorted(Verdict))


class Admission(NamedTuple):
    """What the script answered. (A named tuple: made once per ingest
    request, at a fraction of a frozen dataclass's cost.)"""

    verdict: Verdict
    #: The key record (raw JSON), None for an unknown key.
    record: bytes | None
    retry_after: int
    #: The flag was set by this request: a processing task must be queued.
    kicked: bool
    #: The stream ids of the entries added, in order (empty unless queued).
    ids: tuple[str, ...] = ()
    #: Replicas that acknowledged the write (``WAIT``); -1 when not asked.
    replicas: int = -1


def granting_roles(action: str) -> str:
    """The roles that may do ``action``, as the script matches them."""
    return " " + " ".join(role for role, grants in GRANTS.items() if action in grants) + " "


class Admitter:
    def __init__(
        self,
        client: redis.Redis,
        limiter: RateLimiter,
        kick_ttl_ms: int,
        connections: int,
        *,
        min_replicas: int = 0,
        replica_timeout_ms: int = 100,
    ) -> None:
        # The script's one call per request goes out on connections of its
        # own, past redis-py's per-command path (DedicatedConnections).
        self._connections = DedicatedConnections(client, connections)
        self._redis = client
        #: Replicas each write waits for (``ANALYTICS_MIN_REPLICAS``).
        self.min_replicas = min_replicas
        #: ``WAIT`` packed (empty: no replica is waited for).
        self._wait = (
            b"*3\r\n" + resp_bulk("WAIT") + resp_bulk(min_replicas) + resp_bulk(replica_timeout_ms)
            if min_replicas > 0
            else b""
        )
        self._script = client.register_script("#!lua\n" + lua_source("token_bucket.lua", "admit_events.lua"))
        # The command is packed here, not by hiredis: its constant arguments
        # once (hiredis formats every argument with sprintf; 17 of them came
        # to about 22k instructions per request).
        self._head = resp_bulk("EVALSHA") + resp_bulk(self._script.sha)
        self._api_keys = resp_bulk(keyspace.API_KEYS)
        self._kick_key = resp_bulk(keyspace.KICK_EVENTS)
        # ARGV[2..6] never change for an action.
        fixed = (
            repr(float(limiter.rate)).encode(),
            str(limiter.burst).encode(),
            b"1",
            str(limiter.bucket_ttl_ms).encode(),
        )
        self._fixed = {
            action: (*fixed, granting_roles(action).encode()) for grants in GRANTS.values() for action in grants
        }
        self._fixed_packed = {action: b"".join(map(resp_bulk, args)) for action, args in self._fixed.items()}
        self._kick_ttl = str(kick_ttl_ms).encode()
        self._kick_packed = {True: resp_bulk(self._kick_ttl), False: resp_bulk(b"0")}

    def admit(self, digest: str, action: str, entries: Iterable[StreamEntry], *, kick: bool = True) -> Admission:
        """Admit the key with SHA-256 ``digest`` for ``action`` and, if it
        passes, add ``entries`` (stream, field/value pairs written as given)
        in order, then set the "processing task queued" flag unless ``kick``
        is False (nothing for a worker). Redis errors propagate: a write
        refused for memory means nothing was written."""
        entries = list(entries)
        packed = self.command(digest, action, entries, kick) + self._wait
        replies = 2 if self._wait else 1
        try:
            reply = self._connections.execute_packed(packed, replies)
        except redis.exceptions.NoScriptError:
            # A restarted Redis: load the script (the same one as above), then
            # the same call, so that WAIT still follows it on its connection.
            self._redis.script_load("#!lua\n" + lua_source("token_bucket.lua", "admit_events.lua"))
            reply = self._connections.execute_packed(packed, replies)
        replicas = -1
        if self._wait:
            reply, replicas = reply
        verdict, record, wait, kicked, ids = reply
        return Admission(
            _VERDICTS[verdict],
            record or None,
            retry_after_seconds(int(wait)),
            bool(kicked),
            tuple(map(bytes.decode, ids)),
            int(replicas),
        )

    def queue(self, entries: list[StreamEntry], *, kick: bool) -> tuple[tuple[str, ...], bool, int]:
        """Add ``entries`` for a caller already admitted, all or none
        (``MULTI``/``EXEC``; a full Redis refuses the whole transaction),
        then ``WAIT`` on the same connection when replicas are asked for.
        Returns the stream ids, whether this call set the "processing task
        queued" flag, and the replicas that acknowledged (-1: not asked)."""
        commands: list[tuple[Any, ...]] = [("MULTI",)]
        for stream, fields in entries:
            commands.append(("XADD", stream, "*", *(part for pair in fields.items() for part in pair)))
        if kick:
            commands.append(("SET", keyspace.KICK_EVENTS, 1, "NX", "PX", self._kick_ttl))
        commands.append(("EXEC",))
        packed = b"".join(self._connections.pack(*command) for command in commands) + self._wait
        replies = self._connections.execute_packed(packed, len(commands) + bool(self._wait))
        executed = replies[len(commands) - 1]
        for reply in executed:
            if isinstance(reply, redis.RedisError):
                raise reply
        ids = tuple(i.decode() for i in executed[: len(entries)])
        kicked = bool(kick and executed[-1])
        return ids, kicked, int(replies[-1]) if self._wait else -1

    def keys_and_args(
        self, digest: str, action: str, entries: list[StreamEntry], kick: bool
    ) -> tuple[list[Any], list[Any]]:
        """The script's KEYS and ARGV (see ``lua/admit_events.lua``)."""
        keys: list[Any] = [keyspace.API_KEYS, keyspace.rate_bucket(digest), keyspace.KICK_EVENTS]
        args: list[Any] = [digest, *self._fixed[action], self._kick_ttl if kick else b"0"]
        for stream, fields in entries:
            keys.append(stream)
            args.append(len(fields))
            for name, value in fields.items():
                args += (name, value)
        return keys, args

    def command(self, digest: str, action: str, entries: list[StreamEntry], kick: bool) -> bytes:
        """``EVALSHA`` of the script with :meth:`keys_and_args`, packed."""
        streams: list[bytes] = []
        tail: list[bytes] = []
        for stream, fields in entries:
            streams.append(resp_bulk(stream))
            tail.append(resp_bulk(len(fields)))
            for name, value in fields.items():
                tail.append(resp_bulk(name))
                tail.append(resp_bulk(value))
        # EVALSHA, sha, numkeys, 3 keys + streams, 7 arguments + the entries'
        count = 13 + len(streams) + len(tail)
        return b"".join(
            (
                b"*%d\r\n" % count,
                self._head,
                resp_bulk(3 + len(streams)),
                self._api_keys,
                resp_bulk(keyspace.rate_bucket(digest)),
                self._kick_key,
                *streams,
                resp_bulk(digest),
                self._fixed_packed[action],
                self._kick_packed[kick],
                *tail,
            )
        )
