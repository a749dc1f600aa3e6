"""Commits batches of metric queue entries: one bad entry never blocks its
batch (the shared rules are in :mod:`analytics.pipeline.isolation`)."""

from __future__ import annotations

import dataclasses
import logging

from analytics.metrics.store import MetricCommitResult, MetricStore
from analytics.pipeline.deadletters import PROCESSING_ERROR, DeadLetter
from analytics.pipeline.isolation import describe, is_transient, malformed, try_commit, whole
from analytics.pipeline.queue import Entry
from analytics.privacy.crypto import Vault

log = logging.getLogger(__name__)


class MetricCommitter:
    """Commits batches of metric queue entries; one bad entry never blocks
    its batch.

    An entry that cannot be read at all is set aside whole, sealed (what it
    holds is unknown), in the commit that acknowledges it. When a batch
    fails for a reason other than Redis being away or full (a damaged
    rollup key, say), its entries are committed one by one; one that still
    fails stays pending for the recovery sweep, and after ``max_attempts``
    deliveries is set aside whole: its samples as records, replayable once
    the fault is mended. (Samples are not probed one by one as event records
    are: an entry's samples are folded together into per-bucket deltas.)
    """

    def __init__(self, store: MetricStore, vault: Vault, max_attempts: int) -> None:
        self.store = store
        self.vault = vault
        self.max_attempts = max_attempts

    def commit(self, entries: list[Entry]) -> MetricCommitResult:
        """Commit ``entries``. Raises the Redis error when Redis is away or
        full (the whole batch waits, pending, for the next delivery)."""
        dead = {entry.id: [malformed(self.vault, entry, "metrics queue entry")] for entry in entries if entry.problem}
        try:
            return self.store.commit(entries, dead=dead)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning(
                "a batch of %d metrics queue entries failed (%s); committing them one by one",
                len(entries),
                describe(exc),
            )
        result = MetricCommitResult()
        for entry in entries:
            result += self._commit_entry(entry, dead.get(entry.id, []))
        return result

    def _try(self, entry: Entry, dead: list[DeadLetter]) -> MetricCommitResult | None:
        return try_commit(self.store.commit, entry, dead, "metrics queue entry")

    def _commit_entry(self, entry: Entry, dead: list[DeadLetter]) -> MetricCommitResult:
        result = self._try(entry, dead)
        if result is not None:
            return result
        if entry.deliveries >= self.max_attempts:
            every = whole(
                self.vault,
                entry,
                dead,
                "metrics queue entry",
                [DeadLetter.of_record(record, PROCESSING_ERROR, entry.deliveries) for record in entry.records],
            )
            result = self._try(dataclasses.replace(entry, items=[]), every)
            if result is not None:
                return result
        return MetricCommitResult()  # stays pending: the recovery sweep retries it
