"""The Flask side: ``create_app()`` builds the app from settings.

``gunicorn "web:create_app()"`` serves it (see the Procfile).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from analytics.settings import Settings


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` entries override the environment: any
    setting's variable (``REDIS_URL``, ``ANALYTICS_...``) and Flask keys."""
    app = Flask(__name__)
    config = dict(config or {})
    environ = {**os.environ, **{k: str(v) for k, v in config.items() if k.isupper()}}
    settings = Settings.from_env(environ)
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    app.config.from_mapping(config)
    app.config["ANALYTICS_SETTINGS"] = settings
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from web import errors, extensions
    from web.api import api
    from web.health import health
    from web.metrics_api import metrics_api
    from web.segment import segment

    extensions.init_app(app, settings)
    errors.init_app(app)
    app.register_blueprint(health)
    app.register_blueprint(api)
    app.register_blueprint(segment)
    app.register_blueprint(metrics_api)
    return app
