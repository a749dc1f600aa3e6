"""A gunicorn ``gthread`` worker that keeps the web processes' connection
counts even (``gunicorn.conf.py`` uses it).

Plain gthread workers poll one shared listening socket and whichever wakes
first accepts. With long-lived connections (keep-alive clients, a proxy's
pool, WebSockets) one process often ends up holding most of them, and a
Python process runs one thread at a time: the busy one saturates a core
while its sibling idles. On the ingest benchmark (8 keep-alive clients, 2
processes, 2 cores) a 6/2 split cost about a quarter of the throughput, and
the CPU per request rose too, its threads queueing for one interpreter
lock. SO_REUSEPORT (one socket per worker, the kernel hashing connections
across them) only makes the split random: hashes, not counts.

Here each worker publishes its open connections in a small table shared by
all workers (an anonymous shared mapping the master makes before it forks
them) and takes a new connection only while it holds no more than every
live sibling that is accepting. A worker with more stops polling the
listening socket and looks again every few milliseconds; the least loaded
one always may accept, so the connection is taken without a wait. A sibling
that is shutting down, full, gone, or whose main loop has not run for a few
seconds (hung) does not count, so the others never wait on it for long.
Only workers that are up count: a worker still loading the app takes
nothing yet.

With ``reuse_port`` each worker has its own socket and a connection the
kernel hashed to it can only be taken by it: the worker then accepts as
plain gthread does.
"""

from __future__ import annotations

import mmap
import os
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

#: Workers the table can hold at once (gunicorn's TTIN can add some).
SLOTS = 64
#: How often a worker that stepped aside looks again (seconds).
RECHECK_S = 0.005
#: A sibling whose main loop has not run for this long is ignored. A healthy
#: loop runs at least once a second (gthread's poll timeout).
STALE_S = 3.0

# Per slot: pid, open connections, when its main loop last ran
# (CLOCK_MONOTONIC, the same clock in every process), accepting (1/0).
# MAP_SHARED and anonymous: the forked workers all see the master's pages.
_FIELDS = 4
_TABLE = memoryview(mmap.mmap(-1, SLOTS * _FIELDS * 8)).cast("d")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(slot: int, pid: float, conns: float = 0, seen: float = 0, accepting: float = 0) -> None:
    base = slot * _FIELDS
    _TABLE[base], _TABLE[base + 1], _TABLE[base + 2], _TABLE[base + 3] = pid, conns, seen, accepting


def claim_slot(pid: int) -> int:
    """A free slot of the table, marked as ``pid``'s (one whose worker died
    without releasing it counts as free), or -1 when all are taken. Only the
    master claims, one worker at a time, so no lock is needed."""
    for slot in range(SLOTS):
        owner = int(_TABLE[slot * _FIELDS])
        if owner == 0 or not _alive(owner):
            _write(slot, pid)
            return slot
    return -1


def release_slot(slot: int) -> None:
    _write(slot, 0)


def connection_counts() -> dict[int, int]:
    """Open connections by worker pid, as published (for tests and tools)."""
    return {int(_TABLE[s * _FIELDS]): int(_TABLE[s * _FIELDS + 1]) for s in range(SLOTS) if _TABLE[s * _FIELDS]}


class BalancedThreadWorker(ThreadWorker):
    """gthread, taking a connection only while no live sibling holds fewer."""

    _stepped_aside = False
    _look_again_at = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # In the master, before the fork: held for the master's pid until the
        # worker writes its own.
        self._slot = claim_slot(os.getpid())
        if self._slot < 0:
            self.log.warning("more than %d web workers: this one accepts as plain gthread does", SLOTS)

    def init_process(self) -> None:
        self._balance = self._slot >= 0 and not self.cfg.reuse_port
        if self._slot >= 0:
            _write(self._slot, self.pid)  # gunicorn has set it: the worker's own
        super().init_process()

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self._slot >= 0:
                release_slot(self._slot)

    def _publish(self) -> None:
        if self._slot < 0:
            return
        _write(
            self._slot,
            self.pid,
            self.nr_conns,
            time.monotonic(),
            self.alive and self.nr_conns < self.worker_connections,
        )

    def _least_loaded(self) -> bool:
        """No live, accepting sibling holds fewer connections than this worker."""
        mine, me, now = self.nr_conns, self._slot * _FIELDS, time.monotonic()
        table = _TABLE.tolist()  # one copy: cheaper than indexing the view
        for base in range(0, len(table), _FIELDS):
            pid, conns, seen, accepting = table[base : base + _FIELDS]
            if pid and accepting and conns < mine and base != me and now - seen < STALE_S and _alive(int(pid)):
                return False
        return True

    def _stand_aside(self) -> bool:
        """Whether a sibling should take the next connection. Asked on every
        loop pass while this worker stands aside, so looked up every
        RECHECK_S at most (a pass per request event otherwise)."""
        now = time.monotonic()
        if not self._stepped_aside or now >= self._look_again_at:
            self._stepped_aside = not self._least_loaded()
            self._look_again_at = now + RECHECK_S
        return self._stepped_aside

    def set_accept_enabled(self, enabled: bool) -> None:
        # The loop asks for accepting whenever this worker has room: ask the
        # siblings too.
        if enabled and self._balance:
            enabled = not self._stand_aside()
        else:
            self._stepped_aside = False
        super().set_accept_enabled(enabled)

    def accept(self, listener: Any) -> None:
        if self._balance and self._stand_aside():
            # A sibling holds fewer: leave the connection to it (it is
            # polling the socket, or will be within RECHECK_S).
            super().set_accept_enabled(False)
            return
        super().accept(listener)
        self._publish()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        self._publish()
        if self._stepped_aside:
            timeout = min(timeout, RECHECK_S)
        super().wait_for_and_dispatch_events(timeout)
