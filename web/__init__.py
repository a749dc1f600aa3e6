"""The Flask side: ``create_app()`` builds the app from settings.

``gunicorn "web:create_app()"`` serves it (see the Procfile).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, request

from analytics.startup import start_process
from web import cors, dashboard, errors, extensions, prometheus, stream
from web.alerts_api import alerts_api
from web.api import api
from web.health import health
from web.metrics_api import metrics_api
from web.openapi import openapi
from web.ops import ops
from web.posthog import posthog
from web.privacy import privacy
from web.segment import segment


class AnalyticsFlask(Flask):
    """Flask, with :meth:`ensure_sync` remembered per function.

    Flask asks ``inspect.iscoroutinefunction`` of the view and of every
    request hook on every request; the answer never changes for a function,
    and asking costs about as much as a small hook itself. Kept per app (a
    cache shared by all apps would keep every app of a test run alive), and
    bounded, should a caller pass a new function each time.
    """

    _SYNC_CACHE_SIZE = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync[func]
        except KeyError:
            sync = super().ensure_sync(func)
            if len(self._sync) < self._SYNC_CACHE_SIZE:
                self._sync[func] = sync
            return sync


def no_store(response: Response) -> Response:
    """``Cache-Control: no-store`` on every API answer (``/v1/...``): they
    may carry event data, PHI, which no browser or proxy cache may keep.
    Errors too (same header whatever the outcome), and the stream's refusals
    before its upgrade."""
    if request.path.startswith("/v1/"):
        response.headers["Cache-Control"] = "no-store"
    return response


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` entries override the environment: any
    setting's variable (``REDIS_URL``, ``ANALYTICS_...``) and Flask keys."""
    app = AnalyticsFlask(__name__)
    config = dict(config or {})
    environ = {**os.environ, **{k: str(v) for k, v in config.items() if k.isupper()}}
    # One clear line and no app when the keys are missing (outside dev mode).
    settings = start_process("web", environ=environ)
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    app.config.from_mapping(config)
    app.config["ANALYTICS_SETTINGS"] = settings

    extensions.init_app(app)
    errors.init_app(app)
    app.after_request(no_store)
    app.register_blueprint(health)
    app.register_blueprint(api)
    app.register_blueprint(segment)
    app.register_blueprint(posthog)
    app.register_blueprint(privacy)
    app.register_blueprint(openapi)
    stream.init_app(app)
    app.register_blueprint(dashboard.dashboard)
    app.register_blueprint(metrics_api)
    app.register_blueprint(ops)
    app.register_blueprint(alerts_api)
    prometheus.init_app(app)
    cors.init_app(app)
    return app
