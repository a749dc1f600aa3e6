"""API keys as a service: who is calling, what they may do, and the audit
trail of failed attempts. Every face (HTTP, WebSocket, command line) checks
keys here; the ingest hot path checks them inside its admission script
(:mod:`analytics.pipeline.admission`) with the same answers."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import orjson
import redis

from analytics import keyspace
from analytics.errors import AuthenticationError, RateLimited
from analytics.privacy.apikeys import ApiKey, ApiKeyStore, parse_expiry, parse_record
from analytics.privacy.auditor import Auditor
from analytics.privacy.crypto import Vault, hash_api_key
from analytics.privacy.ratelimit import RateLimiter
from analytics.redis_client import unavailable_as_error

log = logging.getLogger(__name__)


def publish_revocation(client: redis.Redis, key_ids: Iterable[str] = (), user_hashes: Iterable[str] = ()) -> None:
    """Tell every web process that these keys were revoked, or these users
    (keyed hashes, never ids) erased, so they close the streams open with
    them at once (:class:`analytics.live.hub.LiveHub`). Best effort: a
    process that misses it closes them at its next key check."""
    notice = {"keys": sorted(key_ids), "users": sorted(user_hashes)}
    if not notice["keys"] and not notice["users"]:
        return
    try:
        client.publish(keyspace.LIVE_REVOKED, orjson.dumps(notice))
    except redis.RedisError as exc:
        log.warning(
            "could not announce a revocation to open streams (%s); they close at the next key check", type(exc).__name__
        )


class AccessService:
    def __init__(
        self,
        keys: ApiKeyStore,
        limiter: RateLimiter,
        auditor: Auditor,
        vault: Vault,
        notices: redis.Redis | None = None,
    ) -> None:
        self._keys = keys
        #: Where revocations are announced to open streams (:func:`publish_revocation`).
        self._notices = notices
        self._limiter = limiter
        self._auditor = auditor
        self._vault = vault

    def authenticate(self, secret: str | None, *, where: str = "", remote: str | None = None) -> ApiKey:
        """The key of ``secret``, after taking one token from its rate limit.

        One Redis round trip (lookup and token bucket in one script). With
        ``where`` (``http``, ``websocket``...), a failure is also counted and
        audited (:meth:`audit_failure`). Raises :class:`AuthenticationError`
        (unknown, revoked or missing key) or :class:`RateLimited`.
        """
        try:
            with unavailable_as_error():
                if not secret:
                    raise AuthenticationError("missing API key (Authorization: Bearer KEY)")
                lookup = self._limiter.lookup(hash_api_key(secret))
                if lookup.record is None:
                    raise AuthenticationError("invalid API key")
                key = parse_record(lookup.record)
                if key.revoked:
                    raise AuthenticationError("invalid API key")
        except AuthenticationError as exc:
            if where:
                self.audit_failure(where, remote, "missing" if not secret else "invalid")
            raise exc from None
        if not lookup.allowed:
            raise RateLimited("rate limit of this API key exceeded; retry later", lookup.retry_after)
        return key

    def audit_failure(self, where: str, remote: str | None = None, reason: str = "") -> bool:
        """Count an authentication failure (HTTP, WebSocket...) and audit it,
        at most once per window per address (see :class:`Auditor`)."""
        try:
            return self._auditor.auth_failure(where, remote, reason)
        except redis.RedisError:
            log.warning("could not audit an authentication failure (Redis unavailable)")
            return False

    def create(
        self,
        role: str,
        user_id: str | None = None,
        name: str = "",
        actor: str = "system",
        remote: str | None = None,
        *,
        phi: bool = True,
        expires: float | str | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key (the secret is returned once); audited as ``key.create``.

        ``phi=False``: a read key without PHI access (sealed values come back
        redacted). ``expires``: epoch seconds, or a duration or ISO date as
        :func:`parse_expiry` reads them; the key is refused from then on.
        """
        user_hash = self._vault.pseudonym(user_id) if user_id else ""
        until = parse_expiry(expires) if isinstance(expires, str) else float(expires or 0)
        secret, key = self._keys.create(role, user_hash=user_hash, name=name, phi=phi, expires=until)
        self._auditor.record(
            "key.create",
            actor,
            remote,
            keyId=key.id,
            role=key.role,
            userHash=user_hash or None,
            phi=key.phi,
            expires=key.expires or None,
        )
        return secret, key

    def audit_denied(self, key_id: str, path: str, required: str, remote: str | None = None) -> bool:
        """Audit a refusal (403) as ``access.denied``: the key id, the route
        (its pattern, never the values in it) and what was required. Every
        one is written: the key is known and its rate limit bounds them."""
        try:
            self._auditor.record("access.denied", key_id or "anonymous", remote, path=path, required=required or None)
        except redis.RedisError:
            log.warning("could not audit a refused request (Redis unavailable)")
            return False
        return True

    def revoke(self, key_id: str, actor: str = "system", remote: str | None = None) -> ApiKey:
        """Revoke at once (the next request with it gets 401, open streams
        with it close with 1008); audited."""
        key = self._keys.revoke(key_id)
        self._auditor.record("key.revoke", actor, remote, keyId=key.id)
        if self._notices is not None:
            publish_revocation(self._notices, key_ids=[key.id])
        return key

    def list(self) -> list[ApiKey]:
        """Every key, revoked ones included (no secrets: they are not stored)."""
        return self._keys.list()
