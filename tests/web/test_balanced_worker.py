"""The slot table of :mod:`web.balanced_worker` (the worker itself is
tested under gunicorn in ``test_gunicorn.py``)."""

from __future__ import annotations

import os
import subprocess
import sys

from web import balanced_worker


def test_slots_are_claimed_released_and_taken_back_from_dead_workers() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    first = balanced_worker.claim_slot(dead_pid)
    try:
        assert balanced_worker.connection_counts()[dead_pid] == 0
        # Its process is gone without releasing the slot: the next worker gets it.
        mine = balanced_worker.claim_slot(os.getpid())
        assert mine == first
        assert dead_pid not in balanced_worker.connection_counts()
        balanced_worker.release_slot(mine)
        assert os.getpid() not in balanced_worker.connection_counts()
    finally:
        balanced_worker.release_slot(first)


def test_a_live_workers_slot_is_not_taken() -> None:
    mine = balanced_worker.claim_slot(os.getpid())
    try:
        other = balanced_worker.claim_slot(os.getppid())
        assert other != mine
        balanced_worker.release_slot(other)
    finally:
        balanced_worker.release_slot(mine)


def test_a_full_table_claims_nothing() -> None:
    """More workers than slots: the extra ones are told so (-1) and accept
    as plain gthread does, rather than failing to start."""
    taken = []
    try:
        while (slot := balanced_worker.claim_slot(os.getpid())) >= 0:
            taken.append(slot)
        assert len(taken) <= balanced_worker.SLOTS
        assert balanced_worker.claim_slot(os.getpid()) == -1
    finally:
        for slot in taken:
            balanced_worker.release_slot(slot)
    freed = balanced_worker.claim_slot(os.getpid())
    assert freed >= 0
    balanced_worker.release_slot(freed)
