"""Requests served and their durations, as Prometheus metrics
(``analytics_http_requests_total``, ``analytics_http_request_duration_seconds``).

A request only adds itself to a :class:`RequestTally` of its process; the
tally hands its sums to prometheus_client at most a second later. In
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) each prometheus_client
update takes a process-wide lock, asks the OS for the pid and writes the
process's sample file: one counter increment and one histogram observation
per request came to 33k instructions, a twentieth of a single-event
``POST /v1/events`` (callgrind). The counts stay exact; a scrape may miss
another process's last second.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import threading
import time
from typing import Any

from flask import Flask, Response, request
from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

BUCKETS = Histogram.DEFAULT_BUCKETS  # ends with +Inf: every duration has a bucket

REQUESTS = Counter(
    "analytics_http_requests", "HTTP requests served by the web processes", ["method", "endpoint", "status"]
)
REQUEST_SECONDS = Histogram(
    "analytics_http_request_duration_seconds", "Time to answer an HTTP request", ["endpoint"], buckets=BUCKETS
)

#: Where the WSGI wrapper of :func:`init_app` puts the request's start time.
STARTED = "analytics.started"


class RequestTally:
    """Counts by (method, endpoint, status) and durations by endpoint, added
    up under a lock and moved into :data:`REQUESTS` and
    :data:`REQUEST_SECONDS` by :meth:`flush`: from a daemon thread every
    ``interval`` seconds, at exit, and by ``/metrics`` before it answers."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, int], int] = {}
        #: endpoint -> [sum of seconds, then one count per bucket]
        self._durations: dict[str, list[float]] = {}
        self._flusher_pid = 0

    def add(self, method: str, endpoint: str, status: int, seconds: float | None) -> None:
        if self._flusher_pid != os.getpid():  # first request of this (forked) process
            self._start_flusher()
        key = (method, endpoint, status)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            if seconds is not None:
                sums = self._durations.get(endpoint)
                if sums is None:
                    sums = self._durations[endpoint] = [0.0] * (len(BUCKETS) + 1)
                sums[0] += seconds
                # The first bucket whose bound is >= seconds, as Histogram.observe.
                sums[bisect.bisect_left(BUCKETS, seconds) + 1] += 1

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            durations, self._durations = self._durations, {}
        for (method, endpoint, status), count in counts.items():
            REQUESTS.labels(method, endpoint, str(status)).inc(count)
        for endpoint, sums in durations.items():
            # prometheus_client has no public call for many observations at
            # once; its histogram child keeps a sum and one value per bucket
            # (tests/web/test_request_metrics.py pins the exported figures).
            child = REQUEST_SECONDS.labels(endpoint)
            child._sum.inc(sums[0])
            for bucket, observed in zip(child._buckets, sums[1:], strict=True):
                if observed:
                    bucket.inc(observed)

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher_pid == os.getpid():
                return
            if self._flusher_pid:  # a forked child: what it inherited is the parent's to flush
                self._counts, self._durations = {}, {}
            self._flusher_pid = os.getpid()
        threading.Thread(target=self._flush_every_interval, name="request-metrics", daemon=True).start()

    def _flush_every_interval(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - keep counting; the next flush retries
                log.warning("request metrics not flushed: %s", type(exc).__name__)


TALLY = RequestTally()
atexit.register(TALLY.flush)


def _count(response: Response) -> Response:
    # One context-local lookup, not one per attribute read.
    req = request._get_current_object()  # type: ignore[attr-defined]
    started = req.environ.get(STARTED)
    TALLY.add(
        req.method,
        req.endpoint or "unknown",
        response.status_code,
        None if started is None else time.perf_counter() - started,
    )
    return response


def init_app(app: Flask) -> None:
    # The start time comes from a WSGI wrapper rather than a before_request
    # hook: one call less per request, and it also covers the context setup.
    wsgi_app = app.wsgi_app

    def timed(environ: dict[str, Any], start_response: Any) -> Any:
        environ[STARTED] = time.perf_counter()
        return wsgi_app(environ, start_response)

    app.wsgi_app = timed  # type: ignore[method-assign]
    app.after_request(_count)
