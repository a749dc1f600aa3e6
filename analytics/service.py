"""``AnalyticsService``: the Python API of the service.

The web app, the Celery tasks and the command line are thin faces over it.
It owns no threads and no global state: build one per process with
:meth:`AnalyticsService.create` and share it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import marshmallow
import orjson
import redis

from analytics import keyspace
from analytics.admission import Admitter, StreamEntry, Verdict
from analytics.apikeys import ApiKey, ApiKeyStore, parse_record
from analytics.audit import AuditLog, VerifyResult
from analytics.auditing import Auditor
from analytics.crypto import Vault, hash_api_key
from analytics.deadletters import KINDS as DLQ_KINDS
from analytics.deadletters import DeadLetters
from analytics.erasure import Eraser, ErasureReport
from analytics.errors import AuthenticationError, PermissionDenied, RateLimited, ValidationError
from analytics.fastpath import load_split
from analytics.filters import matcher, parse_filters
from analytics.isolation import Committer, MetricCommitter, record_problem
from analytics.metrics.fastpath import load_sample
from analytics.metrics.schemas import EVENT_METRIC_PREFIX, MetricSampleSchema, check_name, metric_query_schema
from analytics.metrics.store import (
    EMPTY_SERIES,
    MetricCommitResult,
    MetricStore,
    auto_bucket,
    bucket_range,
    series_id,
)
from analytics.outage import OutageLog
from analytics.phi import Pairs, PhiPolicy
from analytics.queue import Entry, EventQueue
from analytics.ratelimit import RateLimiter
from analytics.records import QueueItem, RecordCodec
from analytics.redis_client import connect, is_out_of_memory, store_error, unavailable_as_error
from analytics.registry import EventType, EventTypeRegistry
from analytics.retention import Cleanup, CleanupReport
from analytics.rotation import RotationReport, Rotator
from analytics.schemas import event_query_schema, event_schema
from analytics.settings import Settings
from analytics.stats import Stats
from analytics.store import CommitResult, EventStore
from analytics.tally import Tally

log = logging.getLogger(__name__)

#: How long the "a processing task is queued" flag lives if no task clears it.
KICK_TTL_MS = 5000


@dataclass
class TrackResult:
    """What became of the events of one call (the 202 body)."""

    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected, "ids": self.ids}


@dataclass
class PreparedEvents:
    """Events validated and encoded, not queued yet
    (:meth:`AnalyticsService.prepare_events`)."""

    #: Rejections by index, and the ids of the valid events.
    result: TrackResult
    #: Queue lane -> the queue items to add to it as one entry.
    lanes: dict[str, list[QueueItem]]


@dataclass
class PreparedMetrics:
    """Metric samples validated, not queued yet
    (:meth:`AnalyticsService.prepare_metrics`)."""

    #: Rejections by index (accepted and ids once queued).
    result: TrackResult
    #: The valid samples: (index, queue record, series id).
    valid: list[tuple[int, dict[str, Any], str]] = field(default_factory=list)
    #: (metric, series id) -> tags of every valid sample.
    series: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


@dataclass
class DrainReport(Tally):
    """What one processing run did."""

    entries: int = 0
    committed: CommitResult = field(default_factory=CommitResult)
    seconds: float = 0.0
    #: Entries that failed and stay pending (retried, then dead-lettered).
    failed: int = 0
    #: Metric queue entries and what became of them.
    metric_entries: int = 0
    metrics: MetricCommitResult = field(default_factory=MetricCommitResult)


@dataclass(frozen=True)
class ReplayPlan:
    """Where a dead letter goes back: a queue lane and the fields of the
    entry to add to it. The fields are encoded by the queue that reads the
    lane (packed queue items for events, a JSON array for metric samples),
    so the planner, which knows the kind, chooses the encoding."""

    lane: str
    fields: dict[Any, Any]


#: A dead letter -> its replay plan, or None while it is still invalid.
Replayer = Callable[[dict[str, Any]], ReplayPlan | None]

#: Metric queue record field -> sample field as clients send it.
_SAMPLE_FIELDS = (("n", "name"), ("v", "value"), ("g", "tags"), ("ts", "timestamp"))


@dataclass
class ReplayReport:
    """What a dead-letter replay did."""

    replayed: int = 0
    still_invalid: int = 0
    already_gone: int = 0
    ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "stillInvalid": self.still_invalid,
                "alreadyGone": self.already_gone, "ids": self.ids}


def consumer_name() -> str:
    """This process's name in the consumer group."""
    return f"{socket.gethostname()}-{os.getpid()}"


class AnalyticsService:
    def __init__(self, settings: Settings, client: redis.Redis, *,
                 kick: Callable[[], None] | None = None, vault: Vault | None = None) -> None:
        self.settings = settings
        self.redis = client
        self.vault = vault or Vault.from_settings(settings)
        self.policy = PhiPolicy(settings.phi_fields)
        self.codec = RecordCodec(self.vault, self.policy, settings.max_clock_skew_seconds * 1000)
        self.registry = EventTypeRegistry(client, settings)
        self.queue = EventQueue(client)
        self.store = EventStore(client)
        self.api_keys = ApiKeyStore(client)
        self.audit = AuditLog(client, self.vault)
        self.dead_letters = DeadLetters(client, self.vault)
        self.auditor = Auditor(client, self.audit, self.vault, self.policy,
                               settings.auth_failure_window)
        self.rate_limiter = RateLimiter(client, settings.rate_limit, settings.rate_burst)
        self.admitter = Admitter(client, self.rate_limiter, KICK_TTL_MS,
                                 settings.redis_max_connections)
        self.eraser = Eraser(client, self.api_keys, self.store)
        self.metrics_queue = EventQueue(client, lanes=(keyspace.METRICS_QUEUE,), packed=False)
        self.metrics = MetricStore(client, settings)
        self.store.metric_args = self.metrics.event_metric_args()
        self._metric_schema = MetricSampleSchema(phi_fields=self.policy.names)
        self.retention = Cleanup(client, settings)
        self.stats = Stats(client)
        self.committer = Committer(self.store, self.vault, settings.max_attempts)
        self.metric_committer = MetricCommitter(self.metrics, self.vault, settings.max_attempts)
        self._full = OutageLog("processing")
        #: Per dead-letter kind, how a dead letter is validated again on
        #: replay: its queue lane and entry, or None while still invalid.
        self.dead_letter_replayers: dict[str, Replayer] = {
            "events": self.replay_plan_for_event, "segment": self.replay_plan_for_segment,
            "metrics": self.replay_plan_for_metric}
        self._kick = kick

    @classmethod
    def create(cls, settings: Settings | None = None, *,
               kick: Callable[[], None] | None = None) -> AnalyticsService:
        """Build the service from settings (default: the environment)."""
        settings = settings or Settings.from_env()
        return cls(settings, connect(settings), kick=kick)

    # -- ingestion -----------------------------------------------------------
    def _validate(self, raw: Any) -> tuple[dict[str, Any] | None, Pairs | None, str, dict[str, Any]]:
        """The loaded event, its PHI pairs when already split (else None),
        and its priority (its own, or its type's); or None and the errors."""
        if not isinstance(raw, dict):
            return None, None, "", {"_schema": ["An event must be a JSON object."]}
        if len(orjson.dumps(raw)) > self.settings.max_event_bytes:
            return None, None, "", {"_schema": [f"Event larger than {self.settings.max_event_bytes} bytes."]}
        loaded = load_split(raw, self.policy)
        pairs: Pairs | None = None
        if loaded is None:  # invalid (or unusual): marshmallow, the schema of record, decides
            try:
                event = event_schema.load(raw)
            except marshmallow.ValidationError as exc:
                return None, None, "", exc.normalized_messages()
        else:
            event, pairs = loaded
        event_type = self.registry.get(event["type"])
        if event_type is None:
            return None, None, "", {"type": ["Unknown event type: register it first (POST /v1/event-types)."]}
        return event, pairs, event["priority"] or event_type.priority, {}

    def track(self, event: dict[str, Any], *, sent_at: int | None = None) -> TrackResult:
        """Validate and durably queue one event."""
        return self.track_many([event], sent_at=sent_at)

    def track_many(self, events: Iterable[Any], *, sent_at: int | None = None,
                   received_ms: int | None = None) -> TrackResult:
        """Validate ``events`` one by one and queue the valid ones.

        Invalid events are reported by index; the others are accepted. When
        this returns, the accepted events are in Redis (the queue): they
        survive a worker crash. Raises :class:`StoreUnavailable` when Redis
        cannot take them (then none was accepted).
        """
        prepared = self.prepare_events(events, sent_at=sent_at, received_ms=received_ms)
        self.write(self.event_entries(prepared))
        return self._accepted(prepared)

    def prepare_events(self, events: Iterable[Any], *, sent_at: int | None = None,
                       received_ms: int | None = None) -> PreparedEvents:
        """Validate and encode ``events`` (PHI sealed, ids hashed) without
        queueing them: the first half of :meth:`track_many`. Writes nothing;
        reads Redis only to refresh the cached type registry."""
        received = received_ms if received_ms is not None else int(time.time() * 1000)
        result = TrackResult()
        by_priority: dict[str, list[QueueItem]] = {}
        for index, raw in enumerate(events):
            event, pairs, priority, errors = self._validate(raw)
            if event is None:
                result.rejected.append({"index": index, "errors": errors})
                continue
            message_id, item = self.codec.encode_item(event, priority, received, sent_at, pairs)
            by_priority.setdefault(priority, []).append(item)
            result.ids.append(message_id)
        return PreparedEvents(result, {keyspace.event_queue(p): items
                                       for p, items in by_priority.items()})

    @staticmethod
    def _accepted(prepared: PreparedEvents) -> TrackResult:
        result = prepared.result
        result.accepted = len(result.ids) if prepared.lanes else 0
        return result

    def track_as(self, secret: str | None, prepared: PreparedEvents, *, action: str = "ingest",
                 where: str = "", remote: str | None = None) -> tuple[ApiKey, TrackResult]:
        """Authenticate ``secret`` for ``action`` and queue ``prepared``: one
        Redis round trip when there is something to queue (:meth:`admit`)."""
        key, _ = self.admit(secret, self.event_entries(prepared), action=action,
                            where=where, remote=remote)
        return key, self._accepted(prepared)

    def event_entries(self, prepared: PreparedEvents) -> list[StreamEntry]:
        """The queue entries of ``prepared``: one per lane."""
        return [(lane, self.queue.item_fields(items)) for lane, items in prepared.lanes.items()]

    def admit(self, secret: str | None, entries: list[StreamEntry], *, kick: bool = True,
              action: str = "ingest", where: str = "",
              remote: str | None = None) -> tuple[ApiKey, tuple[str, ...]]:
        """Authenticate ``secret`` for ``action`` and add ``entries`` (stream,
        fields) in one Redis round trip (:mod:`analytics.admission`); with
        ``kick``, a processing task is asked for. Every ingest path (events,
        metrics, Segment) admits its requests here.

        Same answers as :meth:`authenticate`, :meth:`ApiKey.require` and then
        :meth:`write` in turn, in that order: :class:`AuthenticationError`
        (audited with ``where``), :class:`RateLimited`,
        :class:`PermissionDenied`, :class:`StoreUnavailable` (nothing
        written); every call takes a token from the key's rate limit.
        Returns the key and the stream ids of the entries added.
        """
        if not secret or not entries:
            # Nothing to write, or no key (refused there): the general path.
            key = self.authenticate(secret, where=where, remote=remote)
            key.require(action)
            return key, ()
        try:  # unavailable_as_error(), without a context manager on the hot path
            admission = self.admitter.admit(hash_api_key(secret), action, entries, kick=kick)
        except redis.RedisError as exc:
            error = store_error(exc)
            if error is None:
                raise
            raise error from None
        if admission.record is None or admission.verdict == Verdict.REVOKED:
            if where:
                self.audit_auth_failure(where, remote, "invalid")
            raise AuthenticationError("invalid API key")
        key = parse_record(admission.record)
        if admission.verdict == Verdict.RATE_LIMITED:
            raise RateLimited("rate limit of this API key exceeded; retry later",
                              admission.retry_after)
        if admission.verdict == Verdict.FORBIDDEN:
            key.require(action)
            raise PermissionDenied(f"this key (role {key.role}) may not {action}")
        assert admission.verdict == Verdict.QUEUED
        if admission.kicked and self._kick is not None:
            self._kick()
        return key, admission.ids

    def write(self, entries: list[StreamEntry], *, kick: bool = True) -> tuple[str, ...]:
        """Add ``entries`` (stream, fields) for a caller already admitted:
        the second trip of the general path. Returns their stream ids."""
        if not entries:
            return ()
        with unavailable_as_error():
            # MULTI: all entries or none. When Redis is full (maxmemory), it
            # refuses the whole transaction at queue time, so a 503 really
            # means nothing was accepted.
            pipe = self.redis.pipeline(transaction=True)
            for stream, fields in entries:
                pipe.xadd(stream, fields)
            if kick:
                pipe.set(keyspace.KICK_EVENTS, 1, nx=True, px=KICK_TTL_MS)
            replies = pipe.execute()
        if kick and replies[-1] and self._kick is not None:
            self._kick()
        return tuple(r.decode() for r in replies[:len(entries)])

    def stored_count(self) -> int:
        """Events stored now (each messageId counted once; erased and
        expired events no longer count)."""
        return self.store.stored_count()

    def kick(self) -> bool:
        """Ask for a processing task unless one is already queued."""
        if self._kick is not None and self.redis.set(keyspace.KICK_EVENTS, 1, nx=True, px=KICK_TTL_MS):
            self._kick()
            return True
        return False

    # -- processing ----------------------------------------------------------
    def process(self, entries: list[Entry]) -> CommitResult:
        """Store the records of ``entries`` and acknowledge them (one step),
        setting poison records aside (:mod:`analytics.isolation`)."""
        return self._process(entries).committed

    def _process(self, entries: list[Entry]) -> DrainReport:
        started = time.perf_counter()
        committed, failed = self.committer.commit(entries)
        seconds = time.perf_counter() - started
        self.stats.record_batch(sum(len(e.items) for e in entries), seconds,
                                errors=failed, dead=committed.dead_lettered)
        return DrainReport(len(entries), committed, seconds, failed)

    @contextlib.contextmanager
    def _unless_full(self) -> Iterator[None]:
        """Redis full (maxmemory, ``noeviction``): stop this run with one log
        line per episode. Entries read stay pending; the recovery sweep
        retries them once Redis has room again."""
        try:
            yield
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            self._full.went_down("maxmemory reached: processing waits")
        else:
            self._full.came_back()

    def drain(self, consumer: str | None = None, *, budget: float | None = None) -> DrainReport:
        """Process queued events until the queue is empty or ``budget`` s pass.

        Clears the "task queued" flag first, so an event queued from now on
        asks for a new task: no wake-up is lost. If work remains (a full
        batch, or the budget ran out), asks for one more task so that idle
        workers join in. When the queue runs dry it lingers up to
        ``drain_linger_seconds`` for new work: under a steady load one task
        keeps draining instead of a new Celery task per burst (each costs
        the worker about as much as processing a few hundred events).
        """
        consumer = consumer or consumer_name()
        budget = self.settings.drain_seconds if budget is None else budget
        report = DrainReport()
        started = time.monotonic()
        with self._unless_full():
            self.redis.delete(keyspace.KICK_EVENTS)
            size = self.settings.batch_size
            lingered = False
            while True:
                entries = self.queue.read(consumer, size)
                samples = self.metrics_queue.read(consumer, size)
                if not entries and not samples:
                    left = budget - (time.monotonic() - started)
                    if lingered or left <= 0:
                        break  # a whole linger without new work: idle
                    # Woken by new work that another worker then took: the
                    # load goes on, so keep waiting; timed out: read once more.
                    lingered = not self._await_work(min(self.settings.drain_linger_seconds, left))
                    continue
                lingered = False
                if entries:
                    report += self._process(entries)
                if samples:
                    report.metric_entries += len(samples)
                    report.metrics += self.metric_committer.commit(samples)
                if len(entries) == size or len(samples) == size:
                    self.kick()
                if time.monotonic() - started > budget:
                    self.kick()
                    break
        report.seconds = time.monotonic() - started
        return report

    def _await_work(self, seconds: float) -> bool:
        """Block up to ``seconds`` until something is added to a queue.

        Only a wake-up hint (XREAD from ``$``, outside the consumer group):
        the caller reads the group again afterwards, which also finds work
        added just before this call.
        """
        if seconds <= 0:
            return False
        lanes = (*self.queue.lanes, *self.metrics_queue.lanes)
        return bool(self.redis.xread({lane: "$" for lane in lanes}, count=1,
                                     block=max(1, int(seconds * 1000))))

    def recover(self, consumer: str | None = None) -> DrainReport:
        """Take over entries left behind by dead workers, and make sure a
        processing task runs if anything is queued (a lost wake-up)."""
        consumer = consumer or consumer_name()
        report = DrainReport()
        started = time.monotonic()
        idle_ms = int(self.settings.claim_idle_seconds * 1000)
        with self._unless_full():
            while True:
                entries = self.queue.claim_stale(consumer, idle_ms, self.settings.batch_size)
                if not entries:
                    break
                report += self._process(entries)
            while True:
                samples = self.metrics_queue.claim_stale(consumer, idle_ms, self.settings.batch_size)
                if not samples:
                    break
                report.metric_entries += len(samples)
                report.metrics += self.metric_committer.commit(samples)
            if (self.queue.length() > self.queue.pending()
                    or self.metrics_queue.length() > self.metrics_queue.pending()):
                self.kick()
        report.seconds = time.monotonic() - started
        return report

    # -- dead letters and figures --------------------------------------------
    def dead_letter_list(self, kind: str = "events", start: str = "-",
                         limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters of ``kind``, oldest first, without PHI: a record shows
        its id, type, messageId and priority, a metric sample its name (if
        valid); a sealed message stays sealed."""
        self._check_kind(kind)
        with unavailable_as_error():
            items = self.dead_letters.entries(kind, start, limit)
        out = []
        for item in items:
            record = item.pop("record", None)
            sealed = item.pop("sealed", None)
            item.pop("user", None)
            if isinstance(record, dict) and kind == "metrics":
                # The name only, and only a well-formed one: the sample failed
                # a check, and its tags may never have been checked for PHI.
                name = record.get("n")
                valid = isinstance(name, str) and not check_name(name, ingest=False)
                item["metric"] = {"name": name if valid else None}
            elif isinstance(record, dict):
                item["event"] = {k: record.get(v) for k, v in
                                 (("id", "i"), ("type", "t"), ("messageId", "m"), ("priority", "p"))}
            item["sealed"] = sealed is not None
            out.append(item)
        return out

    def replay_dead_letters(self, kind: str = "events", ids: Iterable[str] | None = None,
                            limit: int = 1000, actor: str = "cli") -> ReplayReport:
        """Queue dead letters again (all of ``kind`` up to ``limit``, or ``ids``).

        Idempotent: records keep their id, so one already stored is not
        stored twice, and each dead letter is removed and re-queued in one
        step (two replays cannot both queue it). Sealed messages and metric
        samples are validated again; those still invalid stay in the store.
        """
        self._check_kind(kind)
        report = ReplayReport()
        with unavailable_as_error():
            items: list[dict[str, Any] | None]
            if ids is None:
                items = list(self.dead_letters.entries(kind, "-", limit))
            else:
                items = [self.dead_letters.get(kind, i) for i in ids]
            for item in items:
                if item is None:
                    report.already_gone += 1
                    continue
                planner = self.dead_letter_replayers.get(kind)
                plan = planner(item) if planner is not None else None
                if plan is None:
                    report.still_invalid += 1
                    continue
                if self.dead_letters.requeue(kind, item["id"], plan.lane, plan.fields):
                    report.replayed += 1
                    report.ids.append(item["id"])
                else:
                    report.already_gone += 1
            self.audit.record("dlq.replay", actor, kind=kind, count=report.replayed,
                              still_invalid=report.still_invalid)
        if report.replayed:
            self.kick()
        return report

    def replay_plan_for_event(self, item: dict[str, Any]) -> ReplayPlan | None:
        """Where an event dead letter goes back: a record is checked again; a
        sealed raw message is opened and validated again like new input."""
        if "record" in item:
            records = [item["record"]]
        elif "sealed" in item:
            try:
                records = self.records_from_event(orjson.loads(self.dead_letters.open_sealed(item)))
            except (ValueError, ValidationError) as exc:  # orjson.JSONDecodeError is a ValueError
                log.info("dead letter %s is still invalid (%s)", item["id"], type(exc).__name__)
                return None
        else:
            return None
        if not records or any(record_problem(r) is not None for r in records):
            return None
        return ReplayPlan(keyspace.event_queue(records[0]["p"]), self.queue.fields(records))

    def replay_plan_for_segment(self, item: dict[str, Any]) -> ReplayPlan | None:
        """A Segment message set aside at ingestion, mapped and validated again
        under the current settings (an event type registered since, say)."""
        from analytics.segment import SegmentIngest

        if "sealed" not in item:
            return self.replay_plan_for_event(item)
        ingest = SegmentIngest(self, self.settings.segment_unknown_events,
                               self.settings.segment_max_types)
        try:
            event, sent_at = ingest.remap(orjson.loads(self.dead_letters.open_sealed(item)))
            records = self.records_from_event(event, sent_at)
        except (ValueError, ValidationError) as exc:
            log.info("dead letter %s is still invalid (%s)", item["id"], type(exc).__name__)
            return None
        if any(record_problem(r) is not None for r in records):
            return None
        return ReplayPlan(keyspace.event_queue(records[0]["p"]), self.queue.fields(records))

    def replay_plan_for_metric(self, item: dict[str, Any]) -> ReplayPlan | None:
        """Where a metric dead letter goes back: its sample is validated again
        like new input under the current settings (the schema, PHI tag keys,
        the series limit of its metric) and queued on the metrics queue.

        Counted once: the commit sets aside only samples it left out of the
        rollups, a replay moves the dead letter to the queue in one step
        (:meth:`DeadLetters.requeue`), and the commit counts a queue entry
        once. Samples keep no id once counted (that would cost a set member
        per sample), so a dead letter added by hand for a sample that was
        in fact counted would be counted again.
        """
        record = item.get("record")
        if not isinstance(record, dict):
            return None  # sealed or unreadable: the commit sets samples aside as records
        raw = {wire: record[short] for short, wire in _SAMPLE_FIELDS if short in record}
        ts = raw.get("timestamp")
        if isinstance(ts, (int, float)) and not isinstance(ts, bool):
            # Queued in ms, sent in epoch seconds. The float division may
            # move it by under 1 ms, never into another second (the finest
            # unit a bucket starts on).
            raw["timestamp"] = ts / 1000
        # A sample queued without a time (by an older writer) is counted when
        # it was set aside, the closest known time to its arrival.
        prepared = self.prepare_metrics([raw], received_ms=int(item["ts"] * 1000))
        records = self.register_series(prepared)
        if not records:
            log.info("dead letter %s is still invalid (%s)", item["id"],
                     ", ".join(sorted(prepared.result.rejected[0]["errors"])))
            return None
        return ReplayPlan(keyspace.METRICS_QUEUE, self.metrics_queue.fields(records))

    def records_from_event(self, message: Any, sent_at: int | None = None) -> list[dict[str, Any]]:
        """Validate a raw event (or a list of queued records) again."""
        if isinstance(message, list):
            return message
        event, pairs, priority, errors = self._validate(message)
        if event is None:
            raise ValidationError("still invalid", errors)
        return [self.codec.encode(event, priority, int(time.time() * 1000), sent_at, pairs)]

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in DLQ_KINDS:
            raise ValidationError("unknown dead-letter kind",
                                  {"kind": [f"One of: {', '.join(DLQ_KINDS)}."]})

    def stats_snapshot(self) -> dict[str, Any]:
        """The monitoring figures (never raises because Redis is away)."""
        return self.stats.snapshot(self.queue, self.dead_letters)

    # -- metrics -------------------------------------------------------------
    def track_metric(self, name: str, value: float, tags: dict[str, str] | None = None,
                     timestamp: Any = None) -> TrackResult:
        """Validate and durably queue one metric sample."""
        sample: dict[str, Any] = {"name": name, "value": value, "tags": tags or {}}
        if timestamp is not None:
            sample["timestamp"] = timestamp
        return self.track_metrics([sample])

    def track_metrics(self, samples: Iterable[Any], *, received_ms: int | None = None) -> TrackResult:
        """Validate samples one by one and queue the valid ones as one entry.

        Invalid samples (and samples that would add a series to a metric at
        its cardinality limit) are reported by index. Raises
        :class:`StoreUnavailable` when Redis cannot take them.
        """
        return self._queue_metrics(self.prepare_metrics(samples, received_ms=received_ms))

    def prepare_metrics(self, samples: Iterable[Any], *,
                        received_ms: int | None = None) -> PreparedMetrics:
        """Validate ``samples`` without queueing them (no I/O): the first
        half of :meth:`track_metrics`."""
        received = received_ms if received_ms is not None else int(time.time() * 1000)
        prepared = PreparedMetrics(TrackResult())
        for index, raw in enumerate(samples):
            if not isinstance(raw, dict):
                prepared.result.rejected.append(
                    {"index": index, "errors": {"_schema": ["A sample must be a JSON object."]}})
                continue
            sample = load_sample(raw, self.policy.names)
            if sample is None:  # invalid (or unusual): the schema of record decides and explains
                try:
                    sample = self._metric_schema.load(raw)
                except marshmallow.ValidationError as exc:
                    prepared.result.rejected.append(
                        {"index": index, "errors": exc.normalized_messages()})
                    continue
            tags = dict(sorted(sample["tags"].items()))
            sid = series_id(tags)
            prepared.series[(sample["name"], sid)] = tags
            ts = sample["timestamp"] if sample["timestamp"] is not None else received
            prepared.valid.append(
                (index, {"n": sample["name"], "v": sample["value"], "g": tags, "ts": ts}, sid))
        return prepared

    def track_metrics_as(self, secret: str | None, prepared: PreparedMetrics, *,
                         action: str = "ingest", where: str = "",
                         remote: str | None = None) -> tuple[ApiKey, TrackResult]:
        """Authenticate ``secret`` for ``action`` and queue ``prepared``, with
        the answers of :meth:`admit`: one Redis round trip when this process
        knows every series of the samples as registered. A new series must
        be registered under the cardinality limit first, a write that waits
        for the key: then the general path (key, registration, queue)."""
        if prepared.valid and self.metrics.all_known(prepared.series):
            records = [record for _, record, _ in prepared.valid]
            entry = (keyspace.METRICS_QUEUE, self.metrics_queue.fields(records))
            key, ids = self.admit(secret, [entry], action=action, where=where, remote=remote)
            return key, self._metrics_accepted(prepared.result, records, ids)
        key = self.authenticate(secret, where=where, remote=remote)
        key.require(action)
        return key, self._queue_metrics(prepared)

    def _queue_metrics(self, prepared: PreparedMetrics) -> TrackResult:
        """Register the series of ``prepared`` and queue its samples (two
        round trips, one when every series is known)."""
        records = self.register_series(prepared)
        if not records:
            return prepared.result
        ids = self.write([(keyspace.METRICS_QUEUE, self.metrics_queue.fields(records))])
        return self._metrics_accepted(prepared.result, records, ids)

    def register_series(self, prepared: PreparedMetrics) -> list[dict[str, Any]]:
        """Register the series of ``prepared`` under the cardinality limit
        and return the queue records of the samples whose series fit; the
        others join ``prepared.result.rejected`` (by index). What a new
        sample and a replayed metric dead letter both go through. Raises
        :class:`StoreUnavailable` when Redis is away."""
        result = prepared.result
        if not prepared.valid:
            return []
        with unavailable_as_error():
            full = self.metrics.register(prepared.series)
        records = []
        for index, record, sid in prepared.valid:
            if (record["n"], sid) in full:
                result.rejected.append({"index": index, "errors": {"tags": [
                    f"Metric {record['n']!r} has reached its limit of "
                    f"{self.settings.max_series_per_metric} series (tag combinations). Tags are "
                    "not ids: keep unbounded values (user ids, request ids, timestamps) out of tags."]}})
            else:
                records.append(record)
        result.rejected.sort(key=lambda r: r["index"])
        return records

    @staticmethod
    def _metrics_accepted(result: TrackResult, records: list[dict[str, Any]],
                          entry_ids: tuple[str, ...]) -> TrackResult:
        """``result`` with the samples of ``records`` accepted as one entry."""
        if records:
            result.ids = [f"{entry_ids[0]}:{k}" for k in range(len(records))]
            result.accepted = len(records)
        return result

    def get_metric(self, name: str, query: dict[str, Any], *,
                   now_ms: int | None = None) -> dict[str, Any]:
        """The ``GET /v1/metrics/{name}`` answer for ``query`` (raw strings
        or loaded values). A tag combination never written gives no series."""
        try:
            params = metric_query_schema.load(query)
        except marshmallow.ValidationError as exc:
            raise ValidationError("invalid query", exc.normalized_messages()) from None
        event_type = name[len(EVENT_METRIC_PREFIX):] if name.startswith(EVENT_METRIC_PREFIX) else None
        if event_type is None:
            problems = check_name(name, ingest=False)
            if problems:
                raise ValidationError("invalid metric name", {"name": problems})
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        end = params["end"] if params["end"] is not None else now
        start = params["start"] if params["start"] is not None else end - 3_600_000
        if start >= end:
            raise ValidationError("invalid query", {"start": ["Must be before end."]})
        bucket = params["bucket"] or auto_bucket((end - start) / 1000)
        filter_tags = params["tags"]
        bucket_range(start, end, bucket)  # refuse too many points before any work
        series: dict[str, dict[str, str]]
        with unavailable_as_error():
            if event_type is not None:
                # One series without tags, there even before the first event.
                known = (self.registry.get(event_type) is not None
                         or self.redis.exists(keyspace.time_index(event_type)))
                series = {EMPTY_SERIES: {}} if known and not filter_tags else {}
            else:
                series = self.metrics.series(name, filter_tags)
            found = self.metrics.query(name, series, start_ms=start, end_ms=end, bucket=bucket,
                                       agg=params["agg"], filter_tags=filter_tags,
                                       group_by=params["groupBy"])
        return {"name": name, "series": found}

    # -- retention -----------------------------------------------------------
    def cleanup(self, now: float | None = None, budget: float = 30.0) -> CleanupReport:
        """Remove expired events and rollup buckets (see :mod:`analytics.retention`)."""
        with unavailable_as_error():
            return self.retention.run(now, budget)

    def cleanup_status(self) -> dict[str, Any]:
        """Last cleanup run: ``last_run``, ``duration``, ``removed``, ``runs``."""
        return self.retention.status()

    # -- querying ------------------------------------------------------------
    def get_events(self, query: dict[str, Any], *, reveal_phi: bool = True,
                   scope_user_hash: str = "") -> tuple[list[dict[str, Any]], str | None]:
        """Events matching ``query`` (the ``GET /v1/events`` parameters, raw
        strings or loaded values), newest first, and the next cursor.

        ``scope_user_hash`` restricts to one user's events (a scoped key).
        ``properties.*`` parameters filter on properties (:mod:`analytics.filters`).
        """
        where = matcher(parse_filters(query, self.policy))
        query = {k: v for k, v in query.items() if not k.startswith("properties.")}
        try:
            params = event_query_schema.load(query)
        except marshmallow.ValidationError as exc:
            raise ValidationError("invalid query", exc.normalized_messages()) from None
        if params["type"] is not None:
            if self.registry.get(params["type"]) is None:
                raise ValidationError("unknown event type", {"type": ["Unknown event type."]})
            types = [params["type"]]
        else:
            types = [t.name for t in self.registry.all()]
        user_hash = self.codec.user_hash(params["userId"]) if params["userId"] else None
        if scope_user_hash:
            if user_hash is not None and user_hash != scope_user_hash:
                return [], None
            user_hash = scope_user_hash
        with unavailable_as_error():
            records, cursor = self.store.query(
                types, start=params["start"], end=params["end"], user_hash=user_hash,
                priority=params["priority"], limit=params["limit"], cursor=params["cursor"],
                where=where)
        return [self.codec.decode(r, reveal_phi) for r in records], cursor

    # -- configuration -------------------------------------------------------
    def event_types(self) -> list[EventType]:
        return self.registry.all()

    def register_event_type(self, name: str, priority: str = "normal",
                            description: str = "") -> EventType:
        with unavailable_as_error():
            return self.registry.register(name, priority, description)

    def authenticate(self, secret: str | None, *, where: str = "",
                     remote: str | None = None) -> ApiKey:
        """The key of ``secret``, after taking one token from its rate limit.

        One Redis round trip (lookup and token bucket in one script). With
        ``where`` (``http``, ``websocket``...), a failure is also counted and
        audited (:meth:`audit_auth_failure`). Raises
        :class:`AuthenticationError` (unknown, revoked or missing key) or
        :class:`RateLimited`.
        """
        try:
            with unavailable_as_error():
                if not secret:
                    raise AuthenticationError("missing API key (Authorization: Bearer KEY)")
                lookup = self.rate_limiter.lookup(hash_api_key(secret))
                if lookup.record is None:
                    raise AuthenticationError("invalid API key")
                key = parse_record(lookup.record)
                if key.revoked:
                    raise AuthenticationError("invalid API key")
        except AuthenticationError as exc:
            if where:
                self.audit_auth_failure(where, remote, "missing" if not secret else "invalid")
            raise exc from None
        if not lookup.allowed:
            raise RateLimited("rate limit of this API key exceeded; retry later",
                              lookup.retry_after)
        return key

    def create_api_key(self, role: str, user_id: str | None = None,
                       name: str = "", actor: str = "system",
                       remote: str | None = None) -> tuple[str, ApiKey]:
        """A new key (the secret is returned once); audited as ``key.create``."""
        user_hash = self.codec.user_hash(user_id) if user_id else ""
        secret, key = self.api_keys.create(role, user_hash=user_hash, name=name)
        self.auditor.record("key.create", actor, remote, keyId=key.id, role=key.role,
                            userHash=user_hash or None)
        return secret, key

    def revoke_api_key(self, key_id: str, actor: str = "system",
                       remote: str | None = None) -> ApiKey:
        """Revoke at once (the next request with it gets 401); audited."""
        key = self.api_keys.revoke(key_id)
        self.auditor.record("key.revoke", actor, remote, keyId=key.id)
        return key

    # -- privacy: audit, erasure, rotation -------------------------------------
    def audit_read(self, actor: str, filters: dict[str, Any], count: int,
                   remote: str | None = None, action: str = "events.read",
                   **extra: Any) -> str:
        """Audit a read of event data (who, which filters, how many, from where).

        Call it before handing the data out: if the entry cannot be written
        (Redis away: :class:`StoreUnavailable`), the read must fail too.
        """
        with unavailable_as_error():
            return self.auditor.data_read(action, actor, filters, count, remote, **extra)

    def audit_export(self, actor: str, filters: dict[str, Any], count: int,
                     remote: str | None = None, **extra: Any) -> str:
        """Audit an export (``analytics export``, an export endpoint)."""
        return self.audit_read(actor, filters, count, remote, action="events.export", **extra)

    def audit_auth_failure(self, where: str, remote: str | None = None,
                           reason: str = "") -> bool:
        """Count an authentication failure (HTTP, WebSocket...) and audit it,
        at most once per window per address (see :class:`Auditor`)."""
        try:
            return self.auditor.auth_failure(where, remote, reason)
        except redis.RedisError:
            log.warning("could not audit an authentication failure (Redis unavailable)")
            return False

    def verify_audit(self) -> VerifyResult:
        return self.audit.verify()

    def erase_user(self, user_id: str, actor: str, remote: str | None = None) -> ErasureReport:
        """Remove every trace of ``user_id`` (see :mod:`analytics.erasure`).

        Audited as ``user.erase`` with the user's keyed hash, never the id.
        """
        if not isinstance(user_id, str) or not user_id:
            raise ValidationError("invalid user id", {"userId": ["A non-empty string is required."]})
        user_hash = self.codec.user_hash(user_id)
        with unavailable_as_error():
            report = self.eraser.erase(user_hash)
            for key_id in report.keysRevoked:
                self.auditor.record("key.revoke", actor, remote, keyId=key_id, reason="erasure")
            self.auditor.record("user.erase", actor, remote, userHash=user_hash,
                                records=report.records, deadLetters=report.deadLetters)
        return report

    def rotate_encryption(self, progress: Callable[[int], None] = lambda n: None,
                          slice_size: int = 200, actor: str = "cli") -> RotationReport:
        """Re-encrypt stored data under the newest key (see :mod:`analytics.rotation`)."""
        rotator = Rotator(self.redis, self.vault, slice_size)
        self.auditor.record("keys.rotate.start", actor, keyId=rotator.key_id)
        report = rotator.run(progress)
        self.auditor.record("keys.rotate.done", actor, keyId=rotator.key_id,
                            rotated=report.rotated, unreadable=report.unreadable)
        return report

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False
