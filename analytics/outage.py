"""One clear log line per Redis outage, not a traceback per request."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("analytics.outage")


class OutageLog:
    """Remembers whether Redis is known to be away, and logs only changes."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._down = False
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._down

    def went_down(self, reason: str) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        log.error("%s: Redis unavailable (%s); retrying until it is back", self.what, reason)

    def came_back(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.warning("%s: Redis reachable again", self.what)
