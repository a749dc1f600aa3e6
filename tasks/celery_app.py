"""The Celery application, built from the same settings as the web app."""
from __future__ import annotations

import ssl

from celery import Celery

from analytics.settings import Settings

#: Stable task names: the web app sends them by name, without importing us.
PROCESS_EVENTS = "analytics.process_events"
RECOVER = "analytics.recover"
CLEANUP = "analytics.cleanup"


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("analytics", broker=settings.broker_url, include=["tasks.pipeline", "tasks.maintenance"])
    app.config_from_object("celeryconfig")
    app.conf.broker_url = settings.broker_url
    if settings.broker_url.startswith("rediss://") and "ssl_cert_reqs" not in settings.broker_url:
        # kombu would otherwise connect over TLS *without* checking the
        # server's certificate; redis-py (the data store) checks by default.
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    app.conf.beat_schedule = {
        "recover-abandoned-work": {"task": RECOVER, "schedule": settings.recovery_interval},
        "cleanup-expired-data": {"task": CLEANUP, "schedule": settings.cleanup_interval},
    }
    return app


app = create_celery_app()


# Start hooks (keys check, log scrubbing) of `celery -A tasks worker|beat`.
from tasks import signals as _signals  # noqa: E402,F401
