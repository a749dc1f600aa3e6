"""``GET /metrics``: Prometheus text format (no authentication).

Two sources, so that any gunicorn worker answers the same:

* figures kept in Redis (queue, processing, workers, WebSocket, memory,
  cleanup) are read at scrape time by :class:`RedisCollector`, whatever
  process answers;
* figures of the web processes themselves (requests served,
  :mod:`web.request_metrics`) are prometheus_client metrics in
  *multiprocess mode* when ``PROMETHEUS_MULTIPROC_DIR`` is set
  (``gunicorn.conf.py`` sets it up): each worker writes its samples to files
  there (within a second of a request) and the scrape sums them all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from analytics.ops.service import OpsService
from analytics.ops.stats import HISTOGRAM_BOUNDS
from web import request_metrics
from web.extensions import get_analytics

metrics = Blueprint("metrics", __name__)


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


class RedisCollector(Collector):
    """The monitoring figures of :meth:`OpsService.stats_snapshot`,
    computed at scrape time."""

    def __init__(self, ops: OpsService) -> None:
        self._ops = ops

    def collect(self) -> Iterator[Metric]:
        figures = self._ops.stats_snapshot()
        redis_ok = figures["redis"]["status"] == "ok"
        yield _gauge("analytics_redis_up", "1 when Redis answers", 1.0 if redis_ok else 0.0)
        yield _gauge(
            "analytics_process_resident_memory_bytes",
            "RSS of the answering web process",
            figures["process"]["rss_bytes"],
            {"pid": str(figures["process"]["pid"])},
        )
        if not redis_ok:
            return
        yield _gauge(
            "analytics_redis_used_memory_bytes", "Redis INFO used_memory", figures["redis"]["used_memory_bytes"]
        )
        yield _gauge(
            "analytics_redis_maxmemory_bytes", "Redis maxmemory (0: none)", figures["redis"]["maxmemory_bytes"]
        )
        yield from self._queue(figures["queue"])
        yield _gauge("analytics_unreadable_records", "Records read that no key opens", figures["unreadable_records"])
        yield _gauge(
            "analytics_phi_screened",
            "Declared-clear values sealed because they look like identifiers",
            figures["phi_screened"],
        )
        yield from self._workers(figures["workers"])
        ws = figures["websocket"]
        yield _gauge("analytics_websocket_clients", "Connected WebSocket clients", ws["clients"])
        for field, doc in (
            ("messages_total", "WebSocket messages sent"),
            ("errors_total", "WebSocket errors"),
            ("auth_failures_total", "WebSocket authentication failures"),
        ):
            family = CounterMetricFamily(f"analytics_websocket_{field[:-6]}", doc)
            family.add_metric([], ws[field])
            yield family
        yield _gauge(
            "analytics_websocket_message_rate_per_second",
            "WebSocket messages sent per second, all web processes",
            ws["messages_rate"],
        )
        cleanup = figures["cleanup"] or {}
        if isinstance(cleanup.get("last_run"), (int, float)):
            yield _gauge(
                "analytics_cleanup_last_run_timestamp_seconds", "When the cleanup task last ran", cleanup["last_run"]
            )

    @staticmethod
    def _queue(queue: dict[str, Any]) -> Iterator[Metric]:
        lengths = GaugeMetricFamily("analytics_queue_length", "Queued, unprocessed entries", labels=["lane"])
        for lane, n in queue["lanes"].items():
            lengths.add_metric([lane], n)
        yield lengths
        yield _gauge("analytics_queue_pending", "Entries held by a worker, unacknowledged", queue["pending"])
        yield _gauge(
            "analytics_processing_rate_events_per_second",
            "Events processed per second over the last minute",
            queue["rate_per_second"],
        )
        yield _gauge(
            "analytics_processing_error_rate_per_second",
            "Failed entries and dead-lettered records per second, last minute",
            queue["error_rate_per_second"],
        )
        totals = queue["totals"]
        for field, name, doc in (
            ("events", "analytics_events_processed", "Events processed"),
            ("batches", "analytics_batches_processed", "Batches processed"),
            ("errors", "analytics_processing_errors", "Entries that failed"),
            ("dead", "analytics_dead_lettered", "Records dead-lettered"),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], totals.get(field, 0))
            yield family
        dead = GaugeMetricFamily("analytics_dead_letters", "Entries in the dead-letter store", labels=["kind"])
        for kind, n in queue["dead_letters"].items():
            dead.add_metric([kind], n)
        yield dead
        hist = queue["batch_histogram"]
        buckets, running = [], 0
        for bound in HISTOGRAM_BOUNDS:
            running += hist.get(str(bound), 0)
            buckets.append((str(bound), running))
        buckets.append(("+Inf", running + hist.get("+Inf", 0)))
        yield HistogramMetricFamily(
            "analytics_batch_duration_seconds",
            "Time to process one batch",
            buckets=buckets,
            sum_value=totals.get("seconds", 0.0),
        )
        for q in ("p50", "p99"):
            ms = queue[f"batch_ms_{q}"]
            if ms is not None:
                yield _gauge(
                    f"analytics_batch_duration_{q}_seconds", f"{q} of the last batches' processing time", ms / 1000
                )

    @staticmethod
    def _workers(workers: list[dict[str, Any]]) -> Iterator[Metric]:
        alive = GaugeMetricFamily("analytics_workers", "Worker processes by status", labels=["status"])
        for status in ("alive", "lost"):
            alive.add_metric([status], sum(w["status"] == status for w in workers))
        yield alive
        seen = GaugeMetricFamily(
            "analytics_worker_last_seen_timestamp_seconds", "Last heartbeat of each worker process", labels=["worker"]
        )
        processed = CounterMetricFamily(
            "analytics_worker_processed_events", "Events processed by each worker process", labels=["worker"]
        )
        for worker in workers:
            seen.add_metric([worker["name"]], worker["last_seen"])
            processed.add_metric([worker["name"]], worker["processed"])
        yield seen
        yield processed


class _Default(Collector):
    """The process-local default registry (single-process servers)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def registry_for(ops: OpsService) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(ops))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Default())
    return registry


@metrics.get("/metrics")
def prometheus_metrics() -> Response:
    request_metrics.TALLY.flush()  # this process's requests up to now
    output = generate_latest(registry_for(get_analytics().ops))
    return Response(output, content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    request_metrics.init_app(app)
    app.register_blueprint(metrics)
