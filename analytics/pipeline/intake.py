"""The intake: how accepted work enters the queue. Every ingest path
(events, metrics, Segment, imports, dead-letter replays) adds its queue
entries here, and a processing task is asked for through the injected
``kick`` callable (the Celery wake-up; the core never imports Celery)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from analytics import keyspace
from analytics.errors import AuthenticationError, NotReplicated, PermissionDenied, RateLimited
from analytics.pipeline.admission import Admitter, StreamEntry, Verdict
from analytics.privacy.access import AccessService
from analytics.privacy.apikeys import ApiKey, parse_record
from analytics.privacy.crypto import hash_api_key
from analytics.redis_client import store_error, unavailable_as_error

#: How long the "a processing task is queued" flag lives if no task clears it.
KICK_TTL_MS = 5000

#: Asks for a processing task (a Celery ``send_task`` in the web and the workers).
Kick = Callable[[], None]

log = logging.getLogger(__name__)


class Intake:
    def __init__(
        self, client: redis.Redis, admitter: Admitter, access: AccessService, kick: Kick | None = None
    ) -> None:
        self._redis = client
        self._admitter = admitter
        self._access = access
        self._kick = kick
        #: Writes are known to lack replica acknowledgements (logged once).
        self._short_of_replicas = False

    def admit(
        self,
        secret: str | None,
        entries: list[StreamEntry],
        *,
        kick: bool = True,
        action: str = "ingest",
        where: str = "",
        remote: str | None = None,
    ) -> tuple[ApiKey, tuple[str, ...]]:
        """Authenticate ``secret`` for ``action`` and add ``entries`` (stream,
        fields) in one Redis round trip (:mod:`analytics.pipeline.admission`);
        with ``kick``, a processing task is asked for.

        Same answers as :meth:`AccessService.authenticate`,
        :meth:`ApiKey.require` and then :meth:`write` in turn, in that order:
        :class:`AuthenticationError` (audited with ``where``),
        :class:`RateLimited`, :class:`PermissionDenied`,
        :class:`StoreUnavailable` (nothing written); every call takes a token
        from the key's rate limit. Returns the key and the stream ids of the
        entries added.
        """
        if not secret or not entries:
            # Nothing to write, or no key (refused there): the general path.
            return self.authorize(secret, action, where=where, remote=remote), ()
        try:  # unavailable_as_error(), without a context manager on the hot path
            admission = self._admitter.admit(hash_api_key(secret), action, entries, kick=kick)
        except redis.RedisError as exc:
            error = store_error(exc)
            if error is None:
                raise
            raise error from None
        if admission.record is None or admission.verdict == Verdict.REVOKED:
            if where:
                self._access.audit_failure(where, remote, "invalid")
            raise AuthenticationError("invalid API key")
        key = parse_record(admission.record)
        if admission.verdict == Verdict.RATE_LIMITED:
            raise RateLimited("rate limit of this API key exceeded; retry later", admission.retry_after)
        if admission.verdict == Verdict.FORBIDDEN:
            key.require(action)
            raise PermissionDenied(f"this key (role {key.role}) may not {action}")
        assert admission.verdict == Verdict.QUEUED
        if admission.kicked and self._kick is not None:
            self._kick()
        self._check_replicas(admission.replicas)
        return key, admission.ids

    def _check_replicas(self, acknowledged: int) -> None:
        """Refuse to call a write accepted when fewer replicas than
        ``ANALYTICS_MIN_REPLICAS`` have it (``acknowledged`` -1: not asked).
        The entries are in the stream and a worker was woken: they may be
        processed; the client's retry is deduplicated by messageId."""
        required = self._admitter.min_replicas
        if acknowledged < 0 or acknowledged >= required:
            if self._short_of_replicas:
                self._short_of_replicas = False
                log.warning("Redis replicas acknowledge ingest writes again")
            return
        if not self._short_of_replicas:
            self._short_of_replicas = True
            log.error(
                "only %d of %d Redis replicas acknowledged an ingest write in time: answering 503",
                acknowledged,
                required,
            )
        raise NotReplicated(acknowledged, required)

    def authorize(
        self, secret: str | None, action: str = "ingest", *, where: str = "", remote: str | None = None
    ) -> ApiKey:
        """The key of ``secret`` if it may ``action`` (the general path, for
        a caller that writes later: :meth:`write`)."""
        key = self._access.authenticate(secret, where=where, remote=remote)
        key.require(action)
        return key

    def write(self, entries: list[StreamEntry], *, kick: bool = True) -> tuple[str, ...]:
        """Add ``entries`` (stream, fields) for a caller already admitted:
        the second trip of the general path. Returns their stream ids."""
        if not entries:
            return ()
        if self._admitter.min_replicas:
            with unavailable_as_error():
                ids, kicked, replicas = self._admitter.queue(entries, kick=kick)
            if kicked and self._kick is not None:
                self._kick()
            self._check_replicas(replicas)
            return ids
        with unavailable_as_error():
            # MULTI: all entries or none. When Redis is full (maxmemory), it
            # refuses the whole transaction at queue time, so a 503 really
            # means nothing was accepted.
            pipe = self._redis.pipeline(transaction=True)
            for stream, fields in entries:
                pipe.xadd(stream, fields)
            if kick:
                pipe.set(keyspace.KICK_EVENTS, 1, nx=True, px=KICK_TTL_MS)
            replies = pipe.execute()
        if kick and replies[-1] and self._kick is not None:
            self._kick()
        return tuple(r.decode() for r in replies[: len(entries)])

    def kick(self) -> bool:
        """Ask for a processing task unless one is already queued."""
        if self._kick is not None and self._redis.set(keyspace.KICK_EVENTS, 1, nx=True, px=KICK_TTL_MS):
            self._kick()
            return True
        return False

    def clear_kick(self) -> None:
        """Forget the "task queued" flag: the task that owned it is running,
        so work queued from now on asks for a new one (no wake-up is lost)."""
        self._redis.delete(keyspace.KICK_EVENTS)
