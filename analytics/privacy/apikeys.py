"""API keys: created once (shown once), stored only as SHA-256 hashes.

A key carries one role (``ingest``, ``read``, ``admin``) and, optionally, a
user scope: a ``read`` key scoped to a user sees only that user's events. The
scope is kept as the user's keyed hash, never the clear id.
"""

from __future__ import annotations

import functools
import secrets
import time
from dataclasses import asdict, dataclass

import orjson
import redis

from analytics import keyspace
from analytics.errors import AuthenticationError, NotFound, PermissionDenied, ValidationError
from analytics.privacy.crypto import hash_api_key, new_api_key

ROLES = ("ingest", "read", "admin")
#: What each role may do. ``admin`` may do everything.
GRANTS = {"ingest": {"ingest"}, "read": {"read"}, "admin": {"ingest", "read", "admin"}}


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: str
    name: str = ""
    user_hash: str = ""
    created: float = 0.0
    revoked: float = 0.0

    def allows(self, action: str) -> bool:
        return action in GRANTS[self.role]

    def require(self, action: str) -> None:
        if not self.allows(action):
            raise PermissionDenied(f"this key (role {self.role}) may not {action}")


@functools.lru_cache(maxsize=1024)
def parse_record(raw: bytes) -> ApiKey:
    """The key of a stored record. Cached by the record's bytes: a revoked
    key's record differs (``revoked`` set), so a cached parse never hides a
    revocation; every request still reads the record from Redis."""
    return ApiKey(**orjson.loads(raw))


class ApiKeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def create(self, role: str, user_hash: str = "", name: str = "") -> tuple[str, ApiKey]:
        """A new key: returns the secret (shown once) and its record."""
        if role not in ROLES:
            raise ValidationError("invalid role", {"role": [f"one of {', '.join(ROLES)}"]})
        if user_hash and role != "read":
            raise ValidationError("only read keys can be scoped to a user", {"user": ["only with --role read"]})
        secret = new_api_key()
        digest = hash_api_key(secret)
        record = ApiKey(id=secrets.token_hex(6), role=role, name=name[:200], user_hash=user_hash, created=time.time())
        pipe = self._redis.pipeline()
        pipe.hset(keyspace.API_KEYS, digest, orjson.dumps(asdict(record)))
        pipe.hset(keyspace.API_KEY_IDS, record.id, digest)
        pipe.execute()
        return secret, record

    def authenticate(self, secret: str | None) -> ApiKey:
        if not secret:
            raise AuthenticationError("missing API key (Authorization: Bearer KEY)")
        raw = self._redis.hget(keyspace.API_KEYS, hash_api_key(secret))
        if raw is None:
            raise AuthenticationError("invalid API key")
        key = parse_record(raw)
        if key.revoked:
            raise AuthenticationError("invalid API key")
        return key

    def list(self) -> list[ApiKey]:
        keys = [ApiKey(**orjson.loads(raw)) for raw in self._redis.hvals(keyspace.API_KEYS)]
        return sorted(keys, key=lambda k: k.created)

    def revoke(self, key_id: str) -> ApiKey:
        digest = self._redis.hget(keyspace.API_KEY_IDS, key_id)
        raw = self._redis.hget(keyspace.API_KEYS, digest) if digest else None
        if raw is None:
            raise NotFound("no such key id")
        data = orjson.loads(raw)
        data["revoked"] = data["revoked"] or time.time()
        self._redis.hset(keyspace.API_KEYS, digest, orjson.dumps(data))
        return ApiKey(**data)
