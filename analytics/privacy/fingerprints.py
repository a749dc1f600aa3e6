"""Key fingerprints: a process whose keys do not fit the stored data refuses
to start.

Two silent failures are what this prevents. A user hash comes from
``ANALYTICS_HASH_KEY`` (or, without it, the oldest encryption key): run
with another one and erasure, user queries and scoped keys find nobody,
while exiting 0. And data sealed under an encryption key that is no longer
configured cannot be read.

So the first process to start against a Redis stores, in
``analytics:keys:fingerprints``, a fingerprint of the hash key (field
``hash``) and of every configured encryption key (fields ``enc:{fp}``):
an HMAC of a fixed label under each key (:mod:`analytics.privacy.crypto`),
never the key. Every later start checks:

* the hash key must be the stored one, exactly;
* every stored encryption fingerprint must be among the configured keys.
  Adding a new newest key is allowed: its fingerprint is stored when a
  process starts with it, since it seals new data from then on.

The way to drop an old key is the rotation command: once
``analytics keys rotate-encryption`` has re-encrypted everything under the
newest key, it keeps only that key's fingerprint (:meth:`retire_all_but_newest`),
and the others may leave the configuration.

Development mode with its well-known key is not checked (nothing in it is
protected anyway).
"""

from __future__ import annotations

import time
from typing import cast

import redis

from analytics import keyspace
from analytics.errors import ConfigurationError
from analytics.privacy.crypto import Vault

HASH_FIELD = "hash"
ENCRYPTION_PREFIX = "enc:"


class KeyFingerprints:
    def __init__(self, client: redis.Redis, vault: Vault, *, enabled: bool = True) -> None:
        self._redis = client
        self._vault = vault
        self.enabled = enabled

    def stored(self) -> dict[str, str]:
        raw = cast(dict[bytes, bytes], self._redis.hgetall(keyspace.KEY_FINGERPRINTS))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def check(self) -> None:
        """Record the fingerprints (first start, a new newest key) and raise
        :class:`ConfigurationError` (one line) when the configured keys do
        not fit what is stored."""
        if not self.enabled:
            return
        vault = self._vault
        now = str(int(time.time()))
        stored = self.stored()
        first = HASH_FIELD not in stored
        if first:
            # Every configured key may have sealed what is already stored:
            # all are recorded. HSETNX: of processes starting at once, the
            # first one's hash key counts, and the others are checked below.
            pipe = self._redis.pipeline()
            pipe.hsetnx(keyspace.KEY_FINGERPRINTS, HASH_FIELD, vault.hash_fingerprint)
            for fp in vault.key_fingerprints:
                pipe.hsetnx(keyspace.KEY_FINGERPRINTS, ENCRYPTION_PREFIX + fp, now)
            pipe.execute()
            stored = self.stored()
        if stored.get(HASH_FIELD) != vault.hash_fingerprint:
            raise ConfigurationError(
                "the user hash key is not the one the stored data was written with "
                "(ANALYTICS_HASH_KEY, or without it the oldest key of ANALYTICS_ENCRYPTION_KEYS): "
                "user hashes would change and erasure would miss users; configure the original key"
            )
        configured = set(vault.key_fingerprints)
        missing = [
            k for k in stored if k.startswith(ENCRYPTION_PREFIX) and k[len(ENCRYPTION_PREFIX) :] not in configured
        ]
        if missing:
            raise ConfigurationError(
                f"ANALYTICS_ENCRYPTION_KEYS lacks {len(missing)} key(s) that stored data is sealed under "
                f"(fingerprint {missing[0][len(ENCRYPTION_PREFIX) :]}): keep every old key configured until "
                "`analytics keys rotate-encryption` has finished"
            )
        newest = ENCRYPTION_PREFIX + vault.key_fingerprints[0]
        if newest not in stored:
            # A new newest key: it seals from now on, so it must stay.
            self._redis.hsetnx(keyspace.KEY_FINGERPRINTS, newest, now)

    def retire_all_but_newest(self) -> None:
        """After a finished rotation: everything stored is sealed under the
        newest key, so only its fingerprint must stay configured."""
        if not self.enabled:
            return
        newest = ENCRYPTION_PREFIX + self._vault.key_fingerprints[0]
        old = [k for k in self.stored() if k.startswith(ENCRYPTION_PREFIX) and k != newest]
        pipe = self._redis.pipeline()
        pipe.hsetnx(keyspace.KEY_FINGERPRINTS, newest, str(int(time.time())))
        if old:
            pipe.hdel(keyspace.KEY_FINGERPRINTS, *old)
        pipe.execute()
