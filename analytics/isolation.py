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
from typing import Any

import redis

from analytics import keyspace
from analytics.crypto import Vault
from analytics.deadletters import (
    INVALID_RECORD,
    MALFORMED_ENTRY,
    PROCESSING_ERROR,
    DeadLetter,
)
from analytics.queue import Entry
from analytics.redis_client import TRANSIENT_ERRORS, is_out_of_memory
from analytics.store import CommitResult, EventStore

log = logging.getLogger(__name__)

_STRINGS = ("i", "m", "t", "p")
_OPTIONAL_STRINGS = ("u", "a")
_TIMES = ("ts", "rt")


def is_transient(exc: BaseException) -> bool:
    """Redis away, or full: retry later; never the fault of the data."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, redis.ResponseError) and is_out_of_memory(exc)


def record_problem(record: Any) -> str | None:
    """Why ``record`` cannot be stored (names a field, never a value), or None."""
    if not isinstance(record, dict):
        return "not an object"
    for key in _STRINGS:
        value = record.get(key)
        if not isinstance(value, str) or not value:
            return f"field {key!r} missing or not a non-empty string"
    for key in _OPTIONAL_STRINGS:
        if not isinstance(record.get(key, ""), str):
            return f"field {key!r} not a string"
    for key in _TIMES:
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"field {key!r} missing or not an integer"
    if record["p"] not in keyspace.PRIORITIES:
        return "field 'p' not a priority"
    if "s" in record and not isinstance(record["s"], str):
        return "field 's' not a sealed string"
    return None


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
                log.warning("queue entry %s is malformed (%s); dead-lettered sealed",
                            entry.id, entry.problem)
                dead[entry.id] = [DeadLetter.of_raw(self.vault, entry.raw, MALFORMED_ENTRY,
                                                    entry.deliveries)]
                clean.append(entry)
                continue
            good = []
            for record in entry.records:
                problem = record_problem(record)
                if problem is None:
                    good.append(record)
                else:
                    log.warning("a record of queue entry %s is invalid (%s); dead-lettered",
                                entry.id, problem)
                    dead.setdefault(entry.id, []).append(
                        DeadLetter.of_record(record, INVALID_RECORD, entry.deliveries))
            clean.append(entry if len(good) == len(entry.records)
                         else dataclasses.replace(entry, records=good))
        return clean, dead

    def _try(self, entry: Entry, dead: list[DeadLetter]) -> CommitResult | None:
        try:
            return self.store.commit([entry], dead={entry.id: dead} if dead else None)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning("queue entry %s failed (%s)", entry.id, _describe(exc))
            return None

    def _commit_entry(self, entry: Entry, dead: list[DeadLetter]) -> tuple[CommitResult, bool]:
        result = self._try(entry, dead)
        if result is not None:
            return result, True
        good, bad = [], []
        for record in entry.records:
            try:
                self.store.commit([dataclasses.replace(entry, records=[record])], ack=False)
                good.append(record)
            except Exception as exc:
                if is_transient(exc):
                    raise
                bad.append(DeadLetter.of_record(record, PROCESSING_ERROR, entry.deliveries))
        if bad:
            log.warning("%d record(s) of queue entry %s fail to store; dead-lettered, "
                        "the other %d stored", len(bad), entry.id, len(good))
            result = self._try(dataclasses.replace(entry, records=good), dead + bad)
            if result is not None:
                return result, True
        if entry.deliveries >= self.max_attempts:
            log.error("queue entry %s failed %d times; dead-lettering it whole",
                      entry.id, entry.deliveries)
            every = dead + [DeadLetter.of_record(r, PROCESSING_ERROR, entry.deliveries)
                            for r in entry.records]
            if not every:
                every = [DeadLetter.of_raw(self.vault, entry.raw, PROCESSING_ERROR,
                                           entry.deliveries)]
            result = self._try(dataclasses.replace(entry, records=[]), every)
            if result is not None:
                return result, True
        return CommitResult(), False


def _describe(exc: BaseException) -> str:
    # Redis error messages name keys and commands, never our values; other
    # exceptions may carry data, so only their type is logged.
    if isinstance(exc, redis.ResponseError):
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return type(exc).__name__
