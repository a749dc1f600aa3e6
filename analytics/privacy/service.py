"""The privacy service: audited reads, the audit log, erasure and key
rotation. What the faces call when data about people is read or removed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from analytics.errors import ValidationError
from analytics.privacy.access import publish_revocation
from analytics.privacy.audit import AuditLog, VerifyResult
from analytics.privacy.auditor import Auditor
from analytics.privacy.crypto import Vault
from analytics.privacy.erasure import Eraser, ErasureReport
from analytics.privacy.rotation import RotationReport, Rotator
from analytics.redis_client import unavailable_as_error


class PrivacyService:
    def __init__(
        self, client: redis.Redis, vault: Vault, auditor: Auditor, audit_log: AuditLog, eraser: Eraser
    ) -> None:
        self._redis = client
        self._vault = vault
        self._auditor = auditor
        self._audit_log = audit_log
        self._eraser = eraser

    # -- the audit log -------------------------------------------------------
    def audit_read(
        self,
        actor: str,
        filters: dict[str, Any],
        count: int,
        remote: str | None = None,
        action: str = "events.read",
        **extra: Any,
    ) -> str:
        """Audit a read of event data (who, which filters, how many, from where).

        Call it before handing the data out: if the entry cannot be written
        (Redis away: :class:`StoreUnavailable`), the read must fail too.
        """
        with unavailable_as_error():
            return self._auditor.data_read(action, actor, filters, count, remote, **extra)

    def audit_export(
        self, actor: str, filters: dict[str, Any], count: int, remote: str | None = None, **extra: Any
    ) -> str:
        """Audit an export (``analytics export``)."""
        return self.audit_read(actor, filters, count, remote, action="events.export", **extra)

    def record(self, action: str, actor: str, remote: str | None = None, **fields: Any) -> str:
        """Write one audit entry (``stream.open``, ``key.revoke``...)."""
        return self._auditor.record(action, actor, remote, **fields)

    def audit_entries(
        self, after: str | None, limit: int, *, actor: str = "", remote: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the audit log, oldest first, and the next cursor. With
        ``actor``, the read is itself audited (after the page was taken, so a
        page never contains its own read)."""
        entries, cursor = self._auditor.page(after, limit)
        if actor:
            self._auditor.record("audit.read", actor, remote, count=len(entries))
        return entries, cursor

    def verify_audit(self) -> VerifyResult:
        return self._audit_log.verify()

    # -- erasure and rotation ------------------------------------------------
    def erase_user(self, user_id: str, actor: str, remote: str | None = None) -> ErasureReport:
        """Remove every trace of ``user_id`` (see :mod:`analytics.privacy.erasure`).

        Audited as ``user.erase`` with the user's keyed hash, never the id.
        Streams open with the user's keys are closed (1008) by every web
        process (:func:`publish_revocation`).
        """
        if not isinstance(user_id, str) or not user_id:
            raise ValidationError("invalid user id", {"userId": ["A non-empty string is required."]})
        user_hash = self._vault.pseudonym(user_id)
        with unavailable_as_error():
            report = self._eraser.erase(user_hash)
            for key_id in report.keysRevoked:
                self._auditor.record("key.revoke", actor, remote, keyId=key_id, reason="erasure")
            self._auditor.record(
                "user.erase", actor, remote, userHash=user_hash, records=report.records, deadLetters=report.deadLetters
            )
        # Open streams of the user's keys close at once (their keys are
        # revoked above; the hash also reaches streams scoped to the user).
        publish_revocation(self._redis, key_ids=report.keysRevoked, user_hashes=[user_hash])
        return report

    def rotation_total(self) -> int:
        """How many values a rotation would examine (for a progress bar)."""
        return Rotator(self._redis, self._vault).total()

    def rotate_encryption(
        self, progress: Callable[[int], None] = lambda n: None, slice_size: int = 200, actor: str = "cli"
    ) -> RotationReport:
        """Re-encrypt stored data under the newest key (see :mod:`analytics.privacy.rotation`)."""
        rotator = Rotator(self._redis, self._vault, slice_size)
        self._auditor.record("keys.rotate.start", actor, keyId=rotator.key_id)
        report = rotator.run(progress)
        self._auditor.record(
            "keys.rotate.done", actor, keyId=rotator.key_id, rotated=report.rotated, unreadable=report.unreadable
        )
        return report
