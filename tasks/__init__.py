"""Celery side of the service: ``celery -A tasks worker|beat|flower``.

Tasks are thin: each one calls :mod:`analytics` and returns.
"""
from __future__ import annotations

from tasks import monitoring  # noqa: F401 - connects the worker signals
from tasks.celery_app import app, create_celery_app

__all__ = ["app", "create_celery_app"]
