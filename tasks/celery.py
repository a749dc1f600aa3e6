"""The worker entry point: ``celery -A tasks worker|beat|flower`` finds
``tasks.celery.app``. Settings come from the environment."""

from __future__ import annotations

from analytics.settings import Settings
from tasks import celery_compat, monitoring, signals  # noqa: F401 - they connect worker signals
from tasks.celery_app import create_celery_app

celery_compat.install()

app = create_celery_app(Settings.from_env())
