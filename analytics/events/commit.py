"""Poison isolation: one bad record never blocks its batch.

A batch is committed in one script call (:mod:`analytics.events.store`). When that
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

import msgpack

from analytics.events.records import QueueItem, item_record, record_problem
from analytics.events.store import CommitResult, EventStore
from analytics.pipeline.deadletters import INVALID_RECORD, PROCESSING_ERROR, DeadLetter
from analytics.pipeline.isolation import describe, is_transient, malformed, try_commit, whole
from analytics.pipeline.queue import Entry
from analytics.privacy.crypto import Vault

log = logging.getLogger(__name__)


def dead_letter_of(vault: Vault, item: QueueItem, reason: str, attempts: int) -> DeadLetter:
    """A queue item set aside: as its record when the blob decodes, else
    the whole item sealed (it may hold anything)."""
    try:
        return DeadLetter.of_record(item_record(item), reason, attempts)
    except Exception:  # noqa: BLE001 - whatever is wrong with it, it is set aside sealed
        return DeadLetter.of_raw(vault, msgpack.packb(item), reason, attempts)


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
            log.warning(
                "a batch of %d queue entries failed (%s); committing them one by one", len(entries), describe(exc)
            )
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
                log.warning(
                    "a record of queue entry %s is invalid (%s); dead-lettered", entry.id, record_problem(record)
                )
                dead.setdefault(entry.id, []).append(DeadLetter.of_record(record, INVALID_RECORD, entry.deliveries))
            clean.append(entry)
        return clean, dead

    def _try(self, entry: Entry, dead: list[DeadLetter]) -> CommitResult | None:
        return try_commit(self.store.commit, entry, dead, "queue entry")

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
            log.warning(
                "%d record(s) of queue entry %s fail to store; dead-lettered, the other %d stored",
                len(bad),
                entry.id,
                len(good),
            )
            result = self._try(dataclasses.replace(entry, items=good), dead + bad)
            if result is not None:
                return result, True
        if entry.deliveries >= self.max_attempts:
            every = whole(
                self.vault,
                entry,
                dead,
                "queue entry",
                [dead_letter_of(self.vault, item, PROCESSING_ERROR, entry.deliveries) for item in entry.items],
            )
            result = self._try(dataclasses.replace(entry, items=[]), every)
            if result is not None:
                return result, True
        return CommitResult(), False
