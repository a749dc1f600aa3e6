"""Poison isolation, shared by the event and the metric commits: what sets
a failing queue entry aside and what only waits for Redis.

A failure of Redis itself (away, or full) is transient: the whole batch
stays pending and is delivered again. Any other failure is the data's
fault: the committers (:mod:`analytics.events.commit`,
:mod:`analytics.metrics.commit`) then bisect the batch and set aside what
still fails, after ``max_attempts`` deliveries, in the dead-letter store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import redis

from analytics.pipeline.deadletters import MALFORMED_ENTRY, PROCESSING_ERROR, DeadLetter
from analytics.pipeline.queue import Entry
from analytics.privacy.crypto import Vault
from analytics.redis_client import TRANSIENT_ERRORS, is_out_of_memory

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Redis away, or full: retry later; never the fault of the data."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, redis.ResponseError) and is_out_of_memory(exc)


def malformed(vault: Vault, entry: Entry, noun: str) -> DeadLetter:
    """The dead letter of an entry that could not be read at all: sealed
    whole, since nobody knows what it holds."""
    log.warning("%s %s is malformed (%s); dead-lettered sealed", noun, entry.id, entry.problem)
    return DeadLetter.of_raw(vault, entry.raw, MALFORMED_ENTRY, entry.deliveries)


def whole(vault: Vault, entry: Entry, dead: list[DeadLetter], noun: str, records: list[DeadLetter]) -> list[DeadLetter]:
    """The dead letters of an entry that failed every delivery: those it
    had already, then its records (``records``), or the entry sealed whole
    when it has none."""
    log.error("%s %s failed %d times; dead-lettering it whole", noun, entry.id, entry.deliveries)
    return dead + records or [DeadLetter.of_raw(vault, entry.raw, PROCESSING_ERROR, entry.deliveries)]


R = TypeVar("R")


def try_commit(commit: Callable[..., R], entry: Entry, dead: list[DeadLetter], noun: str) -> R | None:
    """``commit`` one entry with its dead letters, or None (logged) when it
    fails for a reason of the data; Redis away or full propagates."""
    try:
        return commit([entry], dead={entry.id: dead} if dead else None)
    except Exception as exc:
        if is_transient(exc):
            raise
        log.warning("%s %s failed (%s)", noun, entry.id, describe(exc))
        return None


def describe(exc: BaseException) -> str:
    # Redis error messages name keys and commands, never our values; other
    # exceptions may carry data, so only their type is logged.
    if isinstance(exc, redis.ResponseError):
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return type(exc).__name__
