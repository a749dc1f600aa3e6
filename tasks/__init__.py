"""Celery side of the service: ``celery -A tasks worker|beat|flower``.

Tasks are thin: each one calls :mod:`analytics` and returns.
"""
from __future__ import annotations

from tasks import celery_compat, monitoring  # noqa: F401 - monitoring connects worker signals
from tasks.celery_app import app, create_celery_app

celery_compat.install()

__all__ = ["app", "create_celery_app"]
