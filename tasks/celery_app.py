"""The Celery application, built from the same settings as the web app."""
from __future__ import annotations

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
    app.conf.beat_schedule = {
        "recover-abandoned-work": {"task": RECOVER, "schedule": settings.recovery_interval},
        "cleanup-expired-data": {"task": CLEANUP, "schedule": settings.cleanup_interval},
    }
    return app


app = create_celery_app()
