"""Worker heartbeats for ``/v1/stats``, and quiet logs during Redis outages.

Each worker process (a prefork child) writes
``analytics:stats:worker:{host-pid}`` every few seconds from a daemon
thread started by ``worker_process_init``: no result backend and no
broadcast round trip are needed to tell which workers are alive.
"""

from __future__ import annotations

import logging
import threading
import time

from celery.beat import SchedulingError
from celery.exceptions import Reject
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
)
from kombu.exceptions import OperationalError

from analytics.redis_client import TRANSIENT_ERRORS
from tasks.base import analytics
from tasks.celery_app import DELIVER_ALERTS, RECOVER

log = logging.getLogger(__name__)


HEARTBEAT_SECONDS = 5.0
CANCEL_NOTICE = "worker_cancel_long_running_tasks_on_connection_loss"


def _beat_forever(stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            analytics().processor.heartbeat()
        except TRANSIENT_ERRORS:
            pass  # Redis is away: the outage is reported once, elsewhere
        except Exception as exc:  # noqa: BLE001 - a heartbeat must never kill its worker
            log.warning("worker heartbeat failed (%s)", type(exc).__name__)
        stop.wait(HEARTBEAT_SECONDS)


_stop = threading.Event()


@worker_process_init.connect
def start_heartbeat(**_: object) -> None:
    threading.Thread(target=_beat_forever, args=(_stop,), name="analytics-heartbeat", daemon=True).start()


class ConnectionErrorsOnOneLine(logging.Filter):
    """Celery and kombu log a traceback (beat: a formatted stack) for every
    failed broker call; during a Redis outage the first line and the error's
    summary say it all. The same line is logged at most once a minute, so an
    outage reads as a few lines rather than one per beat tick."""

    REPEAT_SECONDS = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            message = record.getMessage()
            if record.name == "py.warnings" and CANCEL_NOTICE in message:
                # Celery's dozen-line notice at every lost broker connection;
                # the setting it advertises crashes the worker (celeryconfig.py).
                return False
            if record.levelno >= logging.WARNING and "\n" in message and "onnect" in message:
                # "Cannot connect to redis://...\nTrying again in 2.00 seconds"
                record.msg, record.args = " ".join(message.split()), None
            return True
        if not _is_connection_error(exc):
            return True
        first_line = record.getMessage().splitlines()[0] if record.getMessage() else ""
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self._last.get(key, -self.REPEAT_SECONDS) < self.REPEAT_SECONDS:
            return False
        self._last[key] = now
        summary = f"{type(exc).__name__}: {exc}".splitlines()[0]
        record.msg = first_line if summary in first_line else f"{first_line} ({summary})"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def _is_connection_error(exc: BaseException) -> bool:
    """A broker/Redis connection failure (beat wraps it in SchedulingError).

    Only the exception itself (and the one beat or a retry wraps) counts: an unrelated
    error raised while handling a connection failure keeps its traceback.
    """

    kinds = (*TRANSIENT_ERRORS, OperationalError, ConnectionError, OSError)
    if isinstance(exc, Reject):  # a retry that could not reach the broker
        return isinstance(exc.reason, kinds)
    if isinstance(exc, SchedulingError):
        inner = exc.__cause__ or exc.__context__
        return inner is not None and isinstance(inner, kinds)
    return isinstance(exc, kinds)


class RoutineSweepsAtDebug(logging.Filter):
    """Beat sends the recovery sweep and the alert delivery every few
    seconds, and Celery logs each send, receipt and success at INFO: most of
    an idle stack's log. Those lines go to DEBUG; a sweep that recovers
    something says so itself, at WARNING (:func:`tasks.pipeline.recover`),
    and so does a delivery that fails (:mod:`analytics.alerts.delivery`)."""

    ROUTINE = (RECOVER, "recover-abandoned-work", DELIVER_ALERTS, "deliver-alerts")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and any(name in record.getMessage() for name in self.ROUTINE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


@after_setup_logger.connect
@after_setup_task_logger.connect
def quiet_connection_tracebacks(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:
        handler.addFilter(ConnectionErrorsOnOneLine())
        handler.addFilter(RoutineSweepsAtDebug())
