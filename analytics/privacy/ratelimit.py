"""Per-key rate limit: a token bucket in Redis, checked in the same round
trip as the API key lookup.

One Lua script looks the key up by its hash and, when it exists, takes a
token from its bucket (``analytics:rate:{key hash prefix}``): so an
authenticated request costs exactly one Redis round trip, as before, and
unknown keys create no buckets. The bucket refills at ``rate`` tokens per
second up to ``burst``; Redis's clock is used, so every web process agrees.
A refused request learns when one token will be back: ``Retry-After``.
The bucket's Lua is ``lua/token_bucket.lua`` (one number per key, GCRA),
shared with :mod:`analytics.pipeline.admission` (which also queues an ingest
request's events in the same round trip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from analytics import keyspace
from analytics.lua_scripts import lua_source

#: Bounds of ``Retry-After`` (seconds): at least 1, at most 5 minutes.
MIN_RETRY_AFTER, MAX_RETRY_AFTER = 1, 300


@dataclass(frozen=True)
class Lookup:
    """The key record (raw JSON, or None when unknown) and the verdict."""

    record: bytes | None
    allowed: bool
    retry_after: int


def retry_after_seconds(wait_ms: int) -> int:
    return max(MIN_RETRY_AFTER, min(MAX_RETRY_AFTER, math.ceil(wait_ms / 1000)))


class RateLimiter:
    def __init__(self, client: redis.Redis, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        #: How long a bucket outlives its last use: it is full again by then.
        self.bucket_ttl_ms = math.ceil(self.burst * 1000 / rate) + 1000 if rate > 0 else 0
        self._script = client.register_script(lua_source("token_bucket.lua", "lookup_key_take_token.lua"))

    def lookup(self, digest: str, cost: int = 1) -> Lookup:
        """Fetch the key record with hash ``digest`` and take ``cost`` tokens."""
        record, allowed, wait = self._script(
            keys=[keyspace.API_KEYS, keyspace.rate_bucket(digest)],
            args=[digest, self.rate, self.burst, cost, self.bucket_ttl_ms],
        )
        return Lookup(record or None, bool(allowed), retry_after_seconds(int(wait)))
