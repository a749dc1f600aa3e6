"""The processor: what a Celery processing task runs. It reads queue
entries in batches, commits them (events and metric samples, each batch in
one script call that also acknowledges it) and takes over entries left
pending by dead workers."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from analytics.anomaly.live import DetectionReport, LiveDetection
from analytics.events.commit import Committer
from analytics.events.store import CommitResult
from analytics.metrics.commit import MetricCommitter
from analytics.metrics.store import MetricCommitResult
from analytics.ops.stats import Stats
from analytics.outage import OutageLog
from analytics.pipeline.intake import Intake
from analytics.pipeline.queue import Entry, EventQueue
from analytics.redis_client import is_out_of_memory
from analytics.settings import Settings
from analytics.tally import Tally


def consumer_name() -> str:
    """This process's name in the consumer group."""
    return f"{socket.gethostname()}-{os.getpid()}"


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
    #: Queue entries (events and samples) taken over from stopped workers.
    claimed: int = 0
    #: What live anomaly detection scored.
    detection: DetectionReport = field(default_factory=DetectionReport)


class Processor:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        queue: EventQueue,
        metrics_queue: EventQueue,
        committer: Committer,
        metric_committer: MetricCommitter,
        stats: Stats,
        intake: Intake,
        detection: LiveDetection,
    ) -> None:
        self._settings = settings
        self._redis = client
        self._queue = queue
        self._metrics_queue = metrics_queue
        self._committer = committer
        self._metric_committer = metric_committer
        self._stats = stats
        self._intake = intake
        self._detection = detection
        self._full = OutageLog("processing")
        #: When this process next looks for stopped workers' entries while
        #: draining (monotonic clock): a few commands every half idle time.
        self._next_claim = 0.0

    def process(self, entries: list[Entry]) -> CommitResult:
        """Store the records of ``entries`` and acknowledge them (one step),
        setting poison records aside (:mod:`analytics.events.commit`)."""
        return self._process(entries).committed

    def _process_samples(self, samples: list[Entry]) -> DrainReport:
        """Fold metric queue entries into rollups and acknowledge them (one
        step, :mod:`analytics.metrics.commit`)."""
        committed = self._metric_committer.commit(samples)
        self._detection.note_metrics(samples, committed.series)
        return DrainReport(metric_entries=len(samples), metrics=committed)

    def _detect(self, entries: list[Entry]) -> DetectionReport:
        """Score the buckets the data just committed has closed (after
        :meth:`_process` and :meth:`_process_samples`: the metric series are
        noted there, the event types of ``entries`` here)."""
        self._detection.note_events(entries)
        return self._detection.advance()

    def _process(self, entries: list[Entry]) -> DrainReport:
        started = time.perf_counter()
        committed, failed = self._committer.commit(entries)
        seconds = time.perf_counter() - started
        self._stats.record_batch(
            sum(len(e.items) for e in entries), seconds, errors=failed, dead=committed.dead_lettered
        )
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

        Every ``claim_idle_seconds / 2`` at most (per process, busy or not)
        it also takes over what stopped workers left pending
        (:meth:`_take_over`), so recovery needs no beat: any worker that
        runs does it, and the claim costs one ``XAUTOCLAIM`` per lane.
        """
        consumer = consumer or consumer_name()
        budget = self._settings.drain_seconds if budget is None else budget
        report = DrainReport()
        started = time.monotonic()
        with self._unless_full():
            self._intake.clear_kick()
            size = self._settings.batch_size
            lingered = False
            while True:
                if time.monotonic() >= self._next_claim:
                    report += self._take_over(consumer)
                entries = self._queue.read(consumer, size)
                samples = self._metrics_queue.read(consumer, size)
                if not entries and not samples:
                    # Buckets held back while another worker committed older
                    # entries (that worker may be done by now), and a
                    # backlog's next steps: no more data may come to trigger them.
                    while step := self._detection.advance():
                        report.detection += step
                        if time.monotonic() - started > budget:
                            break
                    left = budget - (time.monotonic() - started)
                    if lingered or left <= 0:
                        break  # a whole linger without new work: idle
                    # Woken by new work that another worker then took: the
                    # load goes on, so keep waiting; timed out: read once more.
                    lingered = not self._await_work(min(self._settings.drain_linger_seconds, left))
                    continue
                lingered = False
                if entries:
                    report += self._process(entries)
                if samples:
                    report += self._process_samples(samples)
                report.detection += self._detect(entries)
                if len(entries) == size or len(samples) == size:
                    self._intake.kick()
                if time.monotonic() - started > budget:
                    self._intake.kick()
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
        lanes = (*self._queue.lanes, *self._metrics_queue.lanes)
        return bool(self._redis.xread({lane: "$" for lane in lanes}, count=1, block=max(1, int(seconds * 1000))))

    def recover(self, consumer: str | None = None) -> DrainReport:
        """Take over entries left behind by dead workers, and make sure a
        processing task runs if anything is queued (a lost wake-up)."""
        consumer = consumer or consumer_name()
        report = DrainReport()
        started = time.monotonic()
        with self._unless_full():
            report += self._take_over(consumer)
            report.detection += self._detection.sweep()
            if (
                self._queue.length() > self._queue.pending()
                or self._metrics_queue.length() > self._metrics_queue.pending()
            ):
                self._intake.kick()
        report.seconds = time.monotonic() - started
        return report

    def _take_over(self, consumer: str) -> DrainReport:
        """Claim (``XAUTOCLAIM``) and commit every entry of both queues that
        a worker has held for ``claim_idle_seconds``: its worker stopped.
        The commit applies an entry only if this claim still holds it, so a
        worker wrongly presumed dead and this one never both count it."""
        report = DrainReport()
        idle_ms = int(self._settings.claim_idle_seconds * 1000)
        self._next_claim = time.monotonic() + max(0.5, self._settings.claim_idle_seconds / 2)
        while entries := self._queue.claim_stale(consumer, idle_ms, self._settings.batch_size):
            report.claimed += len(entries)
            report += self._process(entries)
            report.detection += self._detect(entries)
        while samples := self._metrics_queue.claim_stale(consumer, idle_ms, self._settings.batch_size):
            report.claimed += len(samples)
            report += self._process_samples(samples)
            report.detection += self._detect([])
        return report

    def heartbeat(self, name: str | None = None) -> None:
        """Say this worker is alive (``/v1/stats`` lists live workers)."""
        self._stats.heartbeat(name or consumer_name(), self._stats.processed)
