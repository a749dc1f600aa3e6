"""Poison isolation: one bad record never blocks its batch.

A batch is committed in one script call (:mod:`analytics.store`). When that
call fails for a reason other than Redis being away or full, the batch is
bisected: its entries are committed one by one, and within an entry that
still fails, its records are probed one by one. The records that fail are set
aside in the dead-letter store in the same step that stores the others and
acknowledges the entry. An entry that fails while none of its records does
(a fault of the entry, not of a record) stays pending; the recovery sweep
gives it to a worker again, and after ``max_attempts`` deliveries it is
dead-lettered whole.

Records are also checked before the commit, for rules only the worker can
check (a record built by an older version, or damaged in Redis): those go to
the dead-letter store at once, with reason ``invalid_record``.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TypeVar

import msgpack
import redis

from analytics.crypto import Vault
from analytics.deadletters import (
    INVALID_RECORD,
    MALFORMED_ENTRY,
    PROCESSING_ERROR,
    DeadLetter,
)
from analytics.metrics.store import MetricCommitResult, MetricStore
from analytics.queue import Entry
from analytics.records import QueueItem, item_record, record_problem
from analytics.redis_client import TRANSIENT_ERRORS, is_out_of_memory
from analytics.store import CommitResult, EventStore

log = logging.getLogger(__name__)

def is_transient(exc: BaseException) -> bool:
    """Redis away, or full: retry later; never the fault of the data."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, redis.ResponseError) and is_out_of_memory(exc)


def dead_letter_of(vault: Vault, item: QueueItem, reason: str, attempts: int) -> DeadLetter:
    """A queue item set aside: as its record when the blob decodes, else
    the whole item sealed (it may hold anything)."""
    try:
        return DeadLetter.of_record(item_record(item), reason, attempts)
    except Exception:  # noqa: BLE001 - whatever is wrong with it, it is set aside sealed
        return DeadLetter.of_raw(vault, msgpack.packb(item), reason, attempts)


def malformed(vault: Vault, entry: Entry, noun: str) -> DeadLetter:
    """The dead letter of an entry that could not be read at all: sealed
    whole, since nobody knows what it holds."""
    log.warning("%s %s is malformed (%s); dead-lettered sealed", noun, entry.id, entry.problem)
    return DeadLetter.of_raw(vault, entry.raw, MALFORMED_ENTRY, entry.deliveries)


def whole(vault: Vault, entry: Entry, dead: list[DeadLetter], noun: str,
          records: list[DeadLetter]) -> list[DeadLetter]:
    """The dead letters of an entry that failed every delivery: those it
    had already, then its records (``records``), or the entry sealed whole
    when it has none."""
    log.error("%s %s failed %d times; dead-lettering it whole", noun, entry.id, entry.deliveries)
    return dead + records or [DeadLetter.of_raw(vault, entry.raw, PROCESSING_ERROR,
                                                entry.deliveries)]


class Committer:
    """Commits batches of queue entries, isolating poison records."""

    def __init__(self, store: EventStore, vault: Vault, max_attempts: int) -> None:
        self.store = store
        self.vault = vault
        self.max_attempts = max_attempts

    def commit(self, entries: list[Entry]) -> tuple[CommitResult, int]:
        """Commit ``entries``; returns the result and how many entries failed
        (they stay pending and are retried by the recovery sweep).

        Raises the Redis error when Redis is away or full (nothing to isolate:
        the whole batch waits, pending, for the next delivery).
        """
        clean, dead = self._screen(entries)
        try:
            return self.store.commit(clean, dead=dead), 0
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning("a batch of %d queue entries failed (%s); committing them one by one",
                        len(entries), _describe(exc))
        result, failed = CommitResult(), 0
        for entry in clean:
            one, ok = self._commit_entry(entry, dead.get(entry.id, []))
            result += one
            failed += not ok
        return result, failed

    def _screen(self, entries: list[Entry]) -> tuple[list[Entry], dict[str, list[DeadLetter]]]:
        clean: list[Entry] = []
        dead: dict[str, list[DeadLetter]] = {}
        for entry in entries:
            if entry.problem:
                dead[entry.id] = [malformed(self.vault, entry, "queue entry")]
                clean.append(entry)
                continue
            # Items are checked by the commit script (a bad one fails it and
            # is isolated below); records of an older entry were checked on
            # reading it.
            for record in entry.invalid:
                log.warning("a record of queue entry %s is invalid (%s); dead-lettered",
                            entry.id, record_problem(record))
                dead.setdefault(entry.id, []).append(
                    DeadLetter.of_record(record, INVALID_RECORD, entry.deliveries))
            clean.append(entry)
        return clean, dead

    def _try(self, entry: Entry, dead: list[DeadLetter]) -> CommitResult | None:
        return _try_commit(self.store.commit, entry, dead, "queue entry")

    def _commit_entry(self, entry: Entry, dead: list[DeadLetter]) -> tuple[CommitResult, bool]:
        result = self._try(entry, dead)
        if result is not None:
            return result, True
        good, bad = [], []
        for item in entry.items:
            try:
                self.store.commit([dataclasses.replace(entry, items=[item])], ack=False)
                good.append(item)
            except Exception as exc:
                if is_transient(exc):
                    raise
                bad.append(dead_letter_of(self.vault, item, PROCESSING_ERROR, entry.deliveries))
        if bad:
            log.warning("%d record(s) of queue entry %s fail to store; dead-lettered, "
                        "the other %d stored", len(bad), entry.id, len(good))
            result = self._try(dataclasses.replace(entry, items=good), dead + bad)
            if result is not None:
                return result, True
        if entry.deliveries >= self.max_attempts:
            every = whole(self.vault, entry, dead, "queue entry", [
                dead_letter_of(self.vault, item, PROCESSING_ERROR, entry.deliveries)
                for item in entry.items])
            result = self._try(dataclasses.replace(entry, items=[]), every)
            if result is not None:
                return result, True
        return CommitResult(), False


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
        dead = {entry.id: [malformed(self.vault, entry, "metrics queue entry")]
                for entry in entries if entry.problem}
        try:
            return self.store.commit(entries, dead=dead)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning("a batch of %d metrics queue entries failed (%s); committing them one "
                        "by one", len(entries), _describe(exc))
        result = MetricCommitResult()
        for entry in entries:
            result += self._commit_entry(entry, dead.get(entry.id, []))
        return result

    def _try(self, entry: Entry, dead: list[DeadLetter]) -> MetricCommitResult | None:
        return _try_commit(self.store.commit, entry, dead, "metrics queue entry")

    def _commit_entry(self, entry: Entry, dead: list[DeadLetter]) -> MetricCommitResult:
        result = self._try(entry, dead)
        if result is not None:
            return result
        if entry.deliveries >= self.max_attempts:
            every = whole(self.vault, entry, dead, "metrics queue entry", [
                DeadLetter.of_record(record, PROCESSING_ERROR, entry.deliveries)
                for record in entry.records])
            result = self._try(dataclasses.replace(entry, items=[]), every)
            if result is not None:
                return result
        return MetricCommitResult()  # stays pending: the recovery sweep retries it


R = TypeVar("R")


def _try_commit(commit: Callable[..., R], entry: Entry, dead: list[DeadLetter],
                noun: str) -> R | None:
    """``commit`` one entry with its dead letters, or None (logged) when it
    fails for a reason of the data; Redis away or full propagates."""
    try:
        return commit([entry], dead={entry.id: dead} if dead else None)
    except Exception as exc:
        if is_transient(exc):
            raise
        log.warning("%s %s failed (%s)", noun, entry.id, _describe(exc))
        return None


def _describe(exc: BaseException) -> str:
    # Redis error messages name keys and commands, never our values; other
    # exceptions may carry data, so only their type is logged.
    if isinstance(exc, redis.ResponseError):
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return type(exc).__name__
