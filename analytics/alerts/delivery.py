"""Alert notifications to webhooks: the outbox (``analytics:alerts:outbox``)
read with a consumer group, each entry POSTed to its rule's webhook, signed.

* Live detection writes a notification to the outbox in the same step that
  advances the detector, so each exists once. Delivery reads new entries
  with ``XREADGROUP``; an entry stays pending until it is delivered or set
  aside, so a worker that dies holding one leaves it to the next run.
* A failed attempt (connection error, timeout, any answer but 2xx) is tried
  again after ``alert_retry_seconds``, doubled after each further failure
  (at most an hour). The wait counts from the attempt's start plus the
  timeout, and the entry is taken with ``XCLAIM`` at that idle time, so
  another worker takes over only an attempt that has timed out (receivers
  drop a repeat by its delivery id). Redis counts the attempts (the entry's
  delivery count).
* After ``alert_max_attempts`` the notification goes to
  ``analytics:alerts:dead`` (rule, attempts, last status) and leaves the
  outbox, in one transaction.
* Each entry's alert is audited once when first taken (``alert.firing``,
  ``alert.resolved``), its end too when it is given up
  (``alert.undelivered``).

The body is the notification as pushed on the live stream. It is signed:
``X-Analytics-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">``
with ``X-Analytics-Timestamp`` (epoch s, of this attempt) and
``X-Analytics-Delivery`` (the outbox entry id: the same on every attempt,
for receivers to drop repeats). docs/alerts.rst shows a receiver's check.
The URL is never logged: receivers put tokens in it.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import orjson
import redis

from analytics import keyspace
from analytics.alerts.rules import Rule, RuleStore
from analytics.metrics.store import series_id
from analytics.privacy.auditor import Auditor
from analytics.privacy.crypto import webhook_signature
from analytics.settings import Settings
from analytics.tally import Tally

__all__ = ["AlertDelivery", "DeliveryReport", "Post", "post_json"]

log = logging.getLogger(__name__)

#: Pending entries one run looks at.
BATCH = 100
#: The longest wait between two attempts (seconds).
MAX_BACKOFF = 3600.0
#: How long an audited marker is kept (an entry is long delivered by then).
AUDITED_TTL = 86400

#: POST ``body`` to a URL with headers and a timeout; the status, or an OSError.
Post = Callable[[str, bytes, dict[str, str], float], int]


@dataclass
class DeliveryReport(Tally):
    delivered: int = 0
    #: Attempts that failed and will be tried again.
    failed: int = 0
    #: Notifications set aside after the last attempt.
    dead: int = 0
    #: Notifications of rules deleted since (nothing to send them to).
    dropped: int = 0


def post_json(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """One HTTP(S) POST with the standard library (no redirects followed:
    a signed alert goes where the rule says). Credentials in the URL are
    sent as Basic auth."""
    parts = urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    sent = dict(headers)
    if parts.username is not None:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        sent["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
    try:
        conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, sent)
        response = conn.getresponse()
        response.read(65536)
        return response.status
    finally:
        conn.close()


class AlertDelivery:
    def __init__(
        self,
        client: redis.Redis,
        rules: RuleStore,
        auditor: Auditor,
        settings: Settings,
        secret: str,
        *,
        post: Post = post_json,
    ) -> None:
        self._redis = client
        self._rules = rules
        self._auditor = auditor
        self._secret = secret
        self._post = post
        self.max_attempts = settings.alert_max_attempts
        self.retry_seconds = settings.alert_retry_seconds
        self.timeout = settings.alert_timeout_seconds
        self._group_ready = False

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed attempts before the next."""
        return min(MAX_BACKOFF, self.retry_seconds * 2.0 ** (attempts - 1))

    def run(self, consumer: str | None = None, limit: int = 1000) -> DeliveryReport:
        """Deliver what is due: retries (and entries of dead workers) whose
        wait is over, then new notifications; at most ``limit`` attempts."""
        consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        try:
            return self._run(consumer, limit)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False  # the outbox was deleted since: make it again
            return self._run(consumer, limit)

    def _run(self, consumer: str, limit: int) -> DeliveryReport:
        self._ensure_group()
        report = DeliveryReport()
        done = 0
        for entry_id, fields, attempt in self._due(consumer):
            report += self._deliver(entry_id, fields, attempt)
            done += 1
        while done < limit:
            reply = cast(
                list[Any],
                # One at a time: an entry read waits (idle) until its turn,
                # and one idle longer than its wait may be taken over.
                self._redis.xreadgroup(keyspace.ALERT_GROUP, consumer, {keyspace.ALERT_OUTBOX: ">"}, count=1),
            )
            entries = reply[0][1] if reply else []
            if not entries:
                break
            for raw_id, fields in entries:
                report += self._deliver(raw_id.decode(), fields, 1)
                done += 1
        return report

    def pending(self) -> int:
        """Notifications not yet delivered nor set aside."""
        self._group_ready = False  # it may have been deleted: asking is cheap here
        self._ensure_group()
        info = cast(dict[str, Any], self._redis.xpending(keyspace.ALERT_OUTBOX, keyspace.ALERT_GROUP))
        unread = cast(int, self._redis.xlen(keyspace.ALERT_OUTBOX)) - int(info["pending"])
        return int(info["pending"]) + max(0, unread)

    # -- steps ---------------------------------------------------------------
    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._redis.xgroup_create(keyspace.ALERT_OUTBOX, keyspace.ALERT_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _due(self, consumer: str) -> Iterator[tuple[str, dict[bytes, bytes], int]]:
        """Pending entries whose wait is over, each claimed for ``consumer``
        just before its attempt (one claimer wins: the claim resets the
        entry's idle time)."""
        waiting = self._redis.xpending_range(keyspace.ALERT_OUTBOX, keyspace.ALERT_GROUP, min="-", max="+", count=BATCH)
        for item in waiting:
            attempts = int(item["times_delivered"])
            wait_ms = int((self.timeout + self.backoff(attempts)) * 1000)
            if int(item["time_since_delivered"]) < wait_ms:
                continue
            entry_id = item["message_id"]
            claimed = cast(
                list[tuple[bytes, dict[bytes, bytes] | None]],
                self._redis.xclaim(keyspace.ALERT_OUTBOX, keyspace.ALERT_GROUP, consumer, wait_ms, [entry_id]),
            )
            for raw_id, fields in claimed:
                if fields is None:  # deleted meanwhile: nothing to send
                    self._finish(raw_id.decode())
                    continue
                yield raw_id.decode(), fields, attempts + 1

    def _deliver(self, entry_id: str, fields: dict[bytes, bytes], attempt: int) -> DeliveryReport:
        report = DeliveryReport()
        raw = fields.get(b"alert", b"")
        try:
            notice = orjson.loads(raw)
            rule_id = str(notice["rule"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("alert outbox entry %s is not a notification: dropped", entry_id)
            self._finish(entry_id)
            report.dropped += 1
            return report
        self._audit_once(entry_id, notice)
        rule = self._rules.get(rule_id)
        if rule is None:
            self._finish(entry_id)
            report.dropped += 1
            return report
        status = self._attempt(rule, entry_id, raw, attempt)
        if 200 <= status < 300:
            self._finish(entry_id)
            report.delivered += 1
        elif attempt >= self.max_attempts:
            self._bury(entry_id, rule, raw, attempt, status)
            report.dead += 1
        else:
            report.failed += 1
        return report

    def _attempt(self, rule: Rule, entry_id: str, body: bytes, attempt: int) -> int:
        """One POST; its HTTP status, or 0 when no answer came."""
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "analytics-alerts/1",
            "X-Analytics-Timestamp": str(stamp),
            "X-Analytics-Signature": "v1=" + webhook_signature(self._secret, stamp, body),
            "X-Analytics-Delivery": entry_id,
            "X-Analytics-Attempt": str(attempt),
        }
        try:
            status = self._post(rule.webhook, body, headers, self.timeout)
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a URL it cannot use
            log.warning("alert %s of rule %s: attempt %d failed (%s)", entry_id, rule.id, attempt, type(exc).__name__)
            return 0
        if not 200 <= status < 300:
            log.warning("alert %s of rule %s: attempt %d answered %d", entry_id, rule.id, attempt, status)
        return status

    def _finish(self, entry_id: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(keyspace.ALERT_OUTBOX, keyspace.ALERT_GROUP, entry_id)
        pipe.xdel(keyspace.ALERT_OUTBOX, entry_id)
        pipe.execute()

    def _bury(self, entry_id: str, rule: Rule, body: bytes, attempts: int, status: int) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(
            keyspace.ALERT_DEAD,
            {
                "reason": "webhook_failed",
                "rule": rule.id,
                "attempts": attempts,
                "status": status,
                "ts": round(time.time(), 3),
                "notice": entry_id,
                "alert": body,
            },
        )
        pipe.xack(keyspace.ALERT_OUTBOX, keyspace.ALERT_GROUP, entry_id)
        pipe.xdel(keyspace.ALERT_OUTBOX, entry_id)
        pipe.execute()
        log.warning("alert %s of rule %s set aside after %d attempts", entry_id, rule.id, attempts)
        self._auditor.record(
            "alert.undelivered", "system", rule=rule.id, notice=entry_id, attempts=attempts, status=status
        )

    def _audit_once(self, entry_id: str, notice: dict[str, Any]) -> None:
        """Audit the alert of an outbox entry the first time it is taken
        (the marker is set after the entry is written: a worker killed
        between the two leaves a repeat, never a gap)."""
        marker = keyspace.ALERT_AUDITED + entry_id
        if self._redis.exists(marker):
            return
        tags = notice.get("tags")
        self._auditor.record(
            f"alert.{'resolved' if notice.get('state') == 'resolved' else 'firing'}",
            "system",
            rule=notice.get("rule"),
            metric=notice.get("name"),
            series=series_id(tags if isinstance(tags, dict) else {}),
            bucket=notice.get("bucket"),
            notice=entry_id,
        )
        self._redis.set(marker, 1, ex=AUDITED_TTL)
