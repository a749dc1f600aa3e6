"""The audit log: an append-only Redis stream, hash-chained with an HMAC.

Each entry carries ``mac = HMAC(key, previous mac | entry fields)``. Deleting,
reordering or editing an entry breaks the chain at that point, which
:meth:`AuditLog.verify` reports. The chain head (last mac) is kept beside the
stream and advanced in the same Lua step as the XADD, so concurrent writers
from several processes cannot fork the chain. The HMAC key never leaves the
processes (it is derived from the encryption keys), so someone with Redis
access alone cannot forge a consistent chain.

The chain alone cannot show its newest entries removed (with the head set
to the new last mac) or the whole log deleted. So it is anchored outside
Redis: :meth:`AuditLog.checkpoint` appends signed checkpoints (count and
head mac) to a file (:mod:`analytics.privacy.checkpoints`), and
:meth:`AuditLog.verify` requires the log to extend the last one.

Entries never hold PHI: actors are key ids, users appear as keyed hashes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import orjson
import redis

from analytics.errors import AnalyticsError
from analytics.lua_scripts import lua_source
from analytics.privacy.checkpoints import Checkpoint, CheckpointError, CheckpointFile
from analytics.privacy.crypto import Vault
from analytics.redis_client import StreamChunk

log = logging.getLogger(__name__)

AUDIT_STREAM = "analytics:audit"
AUDIT_HEAD = "analytics:audit:head"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    broken_at: str | None = None
    reason: str = ""
    #: how the log is anchored: the checkpoint it extends, or why it is not
    anchor: str = ""
    #: the break is against the checkpoints (truncation, wipe, forgery),
    #: not at one entry
    unanchored: bool = False


@dataclass(frozen=True)
class CheckpointReport:
    """What :meth:`AuditLog.checkpoint` did: ``written`` a new checkpoint,
    or not (``reason``: nothing new, not configured, or the log does not
    extend the last checkpoint)."""

    written: bool
    count: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Broken(Exception):
    def __init__(self, result: VerifyResult) -> None:
        super().__init__(result.reason)
        self.result = result


class AuditLog:
    def __init__(self, client: redis.Redis, vault: Vault, checkpoints: CheckpointFile | None = None) -> None:
        self._redis = client
        self._vault = vault
        self.checkpoints = checkpoints
        # The mac is computed in Python over (previous mac, fields); the
        # script only appends when the head is still the previous mac the
        # caller saw, so a racing writer retries with the new head instead
        # of forking the chain.
        self._append = client.register_script(lua_source("append_audit_entry.lua"))

    def _mac(self, prev: str, data: bytes) -> str:
        return self._vault.audit_mac(prev.encode() + b"|" + data)

    def _head(self) -> str:
        return (cast(bytes | None, self._redis.get(AUDIT_HEAD)) or b"").decode()

    def record(self, action: str, actor: str, **fields: Any) -> str:
        """Append an entry: ``action`` (``events.read``, ``key.create``...),
        ``actor`` (a key id, ``cli`` or ``system``) and PHI-free details."""
        entry = {"ts": round(time.time(), 3), "action": action, "actor": actor, **fields}
        data = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
        head = self._head()
        for _ in range(50):
            ok, value = self._append(keys=[AUDIT_STREAM, AUDIT_HEAD], args=[head, data, self._mac(head, data)])
            if ok:
                return value.decode()
            head = value.decode()
        raise AnalyticsError("audit log contention: could not append")

    def entries(self, start: str = "-", count: int = 100) -> list[dict[str, Any]]:
        """Entries oldest first from stream id ``start``."""
        out = []
        for entry_id, fields in cast(StreamChunk, self._redis.xrange(AUDIT_STREAM, start, "+", count=count)):
            out.append({"id": entry_id.decode(), **orjson.loads(fields[b"data"])})
        return out

    def _walk(self, start: str, end: str, prev: str, checked: int, page: int, watch: int = 0) -> tuple[str, int, str]:
        """Check the links and macs of the entries from ``start`` to ``end``
        (XRANGE bounds), ``prev`` being the mac before them and ``checked``
        the entries before them. Returns the last mac, the count, and the mac
        of entry number ``watch`` if it was walked. :class:`_Broken` where
        the chain breaks."""
        watched = ""
        while True:
            chunk = cast(StreamChunk, self._redis.xrange(AUDIT_STREAM, start, end, count=page))
            for entry_id, fields in chunk:
                eid = entry_id.decode()
                if fields.get(b"prev", b"").decode() != prev:
                    raise _Broken(VerifyResult(False, checked, eid, "an entry before this one is missing"))
                if fields.get(b"mac", b"").decode() != self._mac(prev, fields.get(b"data", b"")):
                    raise _Broken(VerifyResult(False, checked, eid, "this entry was altered"))
                prev = fields[b"mac"].decode()
                checked += 1
                if checked == watch:
                    watched = prev
            if len(chunk) < page:
                return prev, checked, watched
            start = "(" + chunk[-1][0].decode()

    def verify(self, page: int = 1000, *, checkpoint: bool = True, against: str = "") -> VerifyResult:
        """Walk the whole chain, say where it first breaks, then check it
        against the checkpoints: it must extend the last one. When it does,
        a new checkpoint is written (``checkpoint``). ``against``: check
        against that copy of the checkpoints (a syslog export) instead, and
        write none."""
        if against and self.checkpoints is not None:
            return AuditLog(self._redis, self._vault, self.checkpoints.copy_at(against)).verify(page, checkpoint=False)
        try:
            anchors = self.checkpoints.read() if self.checkpoints else []
        except CheckpointError as exc:
            return VerifyResult(False, 0, None, exc.reason, unanchored=True)
        last = anchors[-1] if anchors else None
        try:
            prev, checked, watched = self._walk("-", "+", "", 0, page, last.count if last else 0)
        except _Broken as broken:
            return broken.result
        if self._head() != prev:
            return VerifyResult(False, checked, None, "entries at the end are missing")
        if self.checkpoints is None:
            return VerifyResult(True, checked, anchor="not anchored: ANALYTICS_AUDIT_CHECKPOINTS is empty")
        if last is None:
            anchor = f"no checkpoint yet in {self.checkpoints.path}"
        else:
            why = self._against(last, checked, watched)
            if why:
                return VerifyResult(False, checked, None, why, unanchored=True)
            anchor = f"extends the checkpoint of {last.when()} ({last.count} entries)"
        if checkpoint:
            self.checkpoint()
        return VerifyResult(True, checked, anchor=anchor)

    @staticmethod
    def _against(last: Checkpoint, count: int, mac: str) -> str:
        """Why a chain of ``count`` entries, entry ``last.count`` having
        ``mac``, does not extend ``last`` ("" when it does)."""
        if last.count == 0:
            return ""
        if count == 0:
            return (
                f"the audit log is empty, but the checkpoint of {last.when()} recorded {last.count} entries: "
                "the log was wiped"
            )
        if count < last.count:
            return (
                f"the audit log has {count} entries, but the checkpoint of {last.when()} recorded {last.count}: "
                "the newest entries were removed (truncated)"
            )
        if mac != last.head:
            return (
                f"entry #{last.count} is not the one the checkpoint of {last.when()} recorded: "
                "the log was rewritten or truncated"
            )
        return ""

    def _snapshot(self) -> tuple[int, str, str]:
        """Count, head mac and last entry id, read in one transaction."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.xlen(AUDIT_STREAM)
        pipe.get(AUDIT_HEAD)
        pipe.xrevrange(AUDIT_STREAM, "+", "-", count=1)
        count, head, newest = pipe.execute()
        last = newest[0][0].decode() if newest else ""
        return int(count), (head or b"").decode(), last

    def checkpoint(self, page: int = 1000) -> CheckpointReport:
        """Append a signed checkpoint of the log as it is now, if it grew
        since the last one and extends it (its entries since then are
        walked and checked, and the count must add up). A log that does not
        extend the last checkpoint gets none: that would launder a
        truncation; it is logged, and ``audit verify`` reports it."""
        checkpoints = self.checkpoints
        if checkpoints is None:
            return CheckpointReport(False, reason="ANALYTICS_AUDIT_CHECKPOINTS is empty")
        report = CheckpointReport(False, reason="nothing new since the last checkpoint")

        def build(last: Checkpoint | None) -> Checkpoint | None:
            nonlocal report
            count, head, newest = self._snapshot()
            before = last.count if last else 0
            if count == before and head == (last.head if last else ""):
                report = CheckpointReport(False, count, "nothing new since the last checkpoint")
                return None
            try:
                if last is not None and last.count:
                    anchor = cast(StreamChunk, self._redis.xrange(AUDIT_STREAM, last.last, last.last))
                    if not anchor or anchor[0][1].get(b"mac", b"").decode() != last.head:
                        raise _Broken(VerifyResult(False, 0, None, "the entry the last checkpoint ends with is gone"))
                    start = "(" + last.last
                else:
                    start = "-"
                mac, walked, _ = self._walk(start, newest or "-", last.head if last else "", before, page)
            except _Broken as broken:
                reason = broken.result.reason
            else:
                if walked == count and mac == head:
                    checkpoint = checkpoints.make(count, head, newest, time.time(), last)
                    report = CheckpointReport(True, count)
                    return checkpoint
                reason = f"{count} entries where the checkpoints and the chain account for {walked}"
            log.error("audit log does not extend its last checkpoint (%s): run `analytics audit verify`", reason)
            report = CheckpointReport(False, count, f"the log does not extend the last checkpoint: {reason}")
            return None

        try:
            checkpoints.append(build)
        except CheckpointError as exc:
            log.error("audit checkpoints do not verify: %s", exc.reason)
            return CheckpointReport(False, reason=exc.reason)
        return report
