"""Per-app objects: :class:`analytics.Analytics` (the domain services) and
the Celery client used to wake the workers. Both live in ``app.extensions``."""

from __future__ import annotations

from flask import Flask, current_app

from analytics import Analytics
from analytics.redis_client import connect
from tasks.celery_app import wakeup
from web.celery import celery_init_app


def init_app(app: Flask) -> None:
    settings = app.config["ANALYTICS_SETTINGS"]
    celery = celery_init_app(app)
    app.extensions["analytics"] = Analytics(settings, connect(settings), kick=wakeup(celery))


def get_analytics() -> Analytics:
    analytics: Analytics = current_app.extensions["analytics"]
    return analytics
