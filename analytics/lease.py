"""A lease: a Redis lock that one process holds for as long as it keeps
renewing it, and that another takes over once the holder stops.

``SET key token NX PX ttl`` takes it; the holder renews it with
``lua/extend_lock.lua`` (only while its token is still there) and gives it
back with ``lua/release_lock.lua`` (only its own). A holder that dies stops
renewing, the key expires and a standby takes it at its next try. Beat
holds one (:mod:`tasks.beat`) so that a second beat stands by instead of
sending every periodic task again.
"""

from __future__ import annotations

import os
import socket
import uuid

import redis

from analytics.lua_scripts import lua_source


def holder_name() -> str:
    """``host-pid-random``: who holds a lease, readable in the key's value."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(self, client: redis.Redis, key: str, ttl_seconds: float, holder: str | None = None) -> None:
        self._redis = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        #: This process's token: the key's value while it holds the lease.
        self.holder = holder or holder_name()
        self._extend = client.register_script(lua_source("extend_lock.lua"))
        self._release = client.register_script(lua_source("release_lock.lua"))

    def hold(self) -> bool:
        """Renew the lease if this process holds it, else take it if free.
        True when this process holds it for the next ``ttl`` from now.
        Redis errors propagate (the caller decides what an outage means)."""
        if self._extend(keys=[self.key], args=[self.holder, self.ttl_ms]):
            return True
        return bool(self._redis.set(self.key, self.holder, nx=True, px=self.ttl_ms))

    def release(self) -> bool:
        """Give the lease back at once (only if this process holds it)."""
        return bool(self._release(keys=[self.key], args=[self.holder]))

    def current_holder(self) -> str | None:
        """Who holds the lease now (None: nobody)."""
        value = self._redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
