"""The web app's Celery client, built from the app's settings as in Flask's
Celery example. The web only sends wake-ups, by task name: it never
imports the tasks."""

from __future__ import annotations

from celery import Celery
from flask import Flask

from tasks.celery_app import create_celery_app


def celery_init_app(app: Flask) -> Celery:
    celery = create_celery_app(app.config["ANALYTICS_SETTINGS"])
    app.extensions["celery"] = celery
    return celery
