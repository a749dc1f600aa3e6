"""API keys: created once (shown once), stored only as SHA-256 hashes.

A key carries one role (``ingest``, ``read``, ``admin``) and, optionally, a
user scope: a ``read`` key scoped to a user sees only that user's events. The
scope is kept as the user's keyed hash, never the clear id.

A key may also be created without PHI access (``phi`` false: its reads get
sealed values redacted) and with an expiry (``expires``, epoch seconds; an
expired key is refused like a revoked one). Records written before these
fields existed lack them and keep what they had: PHI access, no expiry.
"""

from __future__ import annotations

import datetime
import functools
import re
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


class KeyForbidden(PermissionDenied):
    """A 403 that says which key was refused and what would have been
    needed (``required``: an action such as ``admin``, or ``unscoped read``),
    for the audit entry (``access.denied``)."""

    def __init__(self, message: str, required: str, key_id: str = "") -> None:
        super().__init__(message)
        self.required = required
        self.key_id = key_id


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: str
    name: str = ""
    user_hash: str = ""
    created: float = 0.0
    revoked: float = 0.0
    #: May see sealed (PHI) values; false: "minimum necessary", redacted.
    phi: bool = True
    #: Epoch seconds after which the key is refused (0: never). The
    #: admission script reads this field by name (lua/admit_events.lua).
    expires: float = 0.0

    @property
    def reveal_phi(self) -> bool:
        """Whether reads by this key open sealed values (else redacted)."""
        return self.phi

    @property
    def scoped(self) -> bool:
        """Scoped to one user: sees only that user's data."""
        return bool(self.user_hash)

    def expired(self, now: float | None = None) -> bool:
        return bool(self.expires) and self.expires <= (time.time() if now is None else now)

    def allows(self, action: str) -> bool:
        return action in GRANTS[self.role]

    def require(self, action: str) -> None:
        if not self.allows(action):
            raise KeyForbidden(f"this key (role {self.role}) may not {action}", action, self.id)

    def require_phi(self, what: str) -> None:
        """Refuse a key without PHI access what would single a person out."""
        if not self.phi:
            raise KeyForbidden(f"a key without PHI access may not {what}", "phi", self.id)

    def require_unscoped(self, what: str) -> None:
        """Refuse a user-scoped key what cannot be limited to its user."""
        if self.user_hash:
            raise KeyForbidden(f"a user-scoped key may not {what}", "unscoped read", self.id)


@functools.lru_cache(maxsize=1024)
def parse_record(raw: bytes) -> ApiKey:
    """The key of a stored record. Cached by the record's bytes: a revoked
    key's record differs (``revoked`` set), so a cached parse never hides a
    revocation; every request still reads the record from Redis."""
    return ApiKey(**orjson.loads(raw))


_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str, now: float | None = None) -> float:
    """Epoch seconds of an expiry given as a duration from now (``30d``,
    ``12h``, ``90m``, ``2w``) or an ISO 8601 date or time (``2027-01-31``,
    ``2027-01-31T12:00:00+01:00``; UTC when no offset is given)."""
    now = time.time() if now is None else now
    text = text.strip()
    match = _DURATION.fullmatch(text.lower())
    if match:
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if seconds <= 0:
            raise ValidationError("invalid expiry", {"expires": ["Must be in the future."]})
        return now + seconds
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            "invalid expiry", {"expires": ["A duration (30d, 12h, 90m, 2w) or an ISO date (2027-01-31)."]}
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    expires = when.timestamp()
    if expires <= now:
        raise ValidationError("invalid expiry", {"expires": ["Must be in the future."]})
    return expires


class ApiKeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def create(
        self, role: str, user_hash: str = "", name: str = "", *, phi: bool = True, expires: float = 0.0
    ) -> tuple[str, ApiKey]:
        """A new key: returns the secret (shown once) and its record."""
        if role not in ROLES:
            raise ValidationError("invalid role", {"role": [f"one of {', '.join(ROLES)}"]})
        if user_hash and role != "read":
            raise ValidationError("only read keys can be scoped to a user", {"user": ["only with --role read"]})
        secret = new_api_key()
        digest = hash_api_key(secret)
        if not phi and role != "read":
            raise ValidationError(
                "only read keys can be created without PHI access", {"phi": ["only with --role read"]}
            )
        record = ApiKey(
            id=secrets.token_hex(6),
            role=role,
            name=name[:200],
            user_hash=user_hash,
            created=time.time(),
            phi=phi,
            expires=float(expires),
        )
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
        if key.revoked or key.expired():
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
