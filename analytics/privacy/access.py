"""API keys as a service: who is calling, what they may do, and the audit
trail of failed attempts. Every face (HTTP, WebSocket, command line) checks
keys here; the ingest hot path checks them inside its admission script
(:mod:`analytics.pipeline.admission`) with the same answers."""

from __future__ import annotations

import logging

import redis

from analytics.errors import AuthenticationError, RateLimited
from analytics.privacy.apikeys import ApiKey, ApiKeyStore, parse_record
from analytics.privacy.auditor import Auditor
from analytics.privacy.crypto import Vault, hash_api_key
from analytics.privacy.ratelimit import RateLimiter
from analytics.redis_client import unavailable_as_error

log = logging.getLogger(__name__)


class AccessService:
    def __init__(self, keys: ApiKeyStore, limiter: RateLimiter, auditor: Auditor, vault: Vault) -> None:
        self._keys = keys
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
        self, role: str, user_id: str | None = None, name: str = "", actor: str = "system", remote: str | None = None
    ) -> tuple[str, ApiKey]:
        """A new key (the secret is returned once); audited as ``key.create``."""
        user_hash = self._vault.pseudonym(user_id) if user_id else ""
        secret, key = self._keys.create(role, user_hash=user_hash, name=name)
        self._auditor.record("key.create", actor, remote, keyId=key.id, role=key.role, userHash=user_hash or None)
        return secret, key

    def revoke(self, key_id: str, actor: str = "system", remote: str | None = None) -> ApiKey:
        """Revoke at once (the next request with it gets 401); audited."""
        key = self._keys.revoke(key_id)
        self._auditor.record("key.revoke", actor, remote, keyId=key.id)
        return key

    def list(self) -> list[ApiKey]:
        """Every key, revoked ones included (no secrets: they are not stored)."""
        return self._keys.list()
