"""How the Celery app is built: one function from settings, used by the
worker entry (:mod:`tasks.celery`), the web app (:func:`web.celery.celery_init_app`)
and the command line. Importing this module builds nothing."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from celery import Celery

from analytics.settings import Settings

log = logging.getLogger(__name__)

#: Stable task names: the web and the command line send them by name.
PROCESS_EVENTS = "analytics.process_events"
RECOVER = "analytics.recover"
CLEANUP = "analytics.cleanup"
AUDIT_CHECKPOINT = "analytics.audit_checkpoint"
DELIVER_ALERTS = "analytics.deliver_alerts"


def create_celery_app(settings: Settings) -> Celery:
    """The Celery app for ``settings``: the broker, ``celeryconfig`` and beat's schedule."""
    tasks = ["tasks.pipeline", "tasks.maintenance", "tasks.alerts"]
    app = Celery("analytics", broker=settings.broker_url, include=tasks)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = settings.broker_url
    if settings.broker_url.startswith("rediss://") and "ssl_cert_reqs" not in settings.broker_url:
        # kombu would otherwise connect over TLS *without* checking the
        # server's certificate; redis-py (the data store) checks by default.
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # Beat sends only while it holds the beat lock: a second beat is harmless.
    app.conf.beat_scheduler = "tasks.beat:LockedScheduler"
    app.conf.beat_schedule = {
        "recover-abandoned-work": {"task": RECOVER, "schedule": settings.recovery_interval},
        "cleanup-expired-data": {"task": CLEANUP, "schedule": settings.cleanup_interval},
        "audit-checkpoint": {"task": AUDIT_CHECKPOINT, "schedule": settings.audit_checkpoint_interval},
        # Retries come due, and a notification a dead worker held is taken over.
        "deliver-alerts": {"task": DELIVER_ALERTS, "schedule": settings.recovery_interval},
    }
    return app


def wakeup(celery: Celery) -> Callable[[], None]:
    """The ``kick`` callable the core calls to ask for a processing task.

    The work it announces is already durable in the queue; if the broker
    cannot take the wake-up, beat's recovery sweep starts processing
    instead. So it never fails its caller (a request, an import).
    """

    def kick() -> None:
        try:
            celery.send_task(PROCESS_EVENTS, retry=False)
        except Exception as exc:  # noqa: BLE001 - any broker failure is non-fatal here
            log.warning("could not queue a processing task (%s); the recovery sweep will", type(exc).__name__)

    return kick


def alert_wakeup(celery: Celery) -> Callable[[], None]:
    """The ``notify`` callable live detection calls once notifications are
    in the outbox. They are durable there; beat's run delivers them if the
    broker cannot take this."""

    def notify() -> None:
        try:
            celery.send_task(DELIVER_ALERTS, retry=False)
        except Exception as exc:  # noqa: BLE001 - any broker failure is non-fatal here
            log.warning("could not queue an alert delivery (%s); beat's run will", type(exc).__name__)

    return notify
