"""CORS for the ingestion endpoints, so that pages of the origins listed in
``ANALYTICS_CORS_ORIGINS`` may post events from a browser.

Only ingestion answers cross-origin calls: ``POST /v1/events``, the
Segment-compatible paths (with the settings analytics.js loads) and the
PostHog-compatible ones. Reads never do: a page of another origin must not
read events, whatever key it holds. An origin not listed gets no CORS header
at all (the browser then refuses the call); preflights (``OPTIONS``) are
answered with ``Access-Control-Max-Age`` so that a browser asks once per
``ANALYTICS_CORS_MAX_AGE`` seconds, not before every batch.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from analytics.settings import Settings

#: Blueprints whose every view is ingestion (or what an ingesting SDK reads to start).
CORS_BLUEPRINTS = frozenset({"segment", "posthog"})
#: Further ingestion views.
CORS_ENDPOINTS = frozenset({"api.post_events"})
#: Request headers a page may send: the SDKs send no others.
ALLOWED_HEADERS = "Content-Type, Content-Encoding, Authorization"
#: Response headers a page may read (an SDK's backoff reads ``Retry-After``).
EXPOSED_HEADERS = "Retry-After"


def allows_cors(endpoint: str | None) -> bool:
    if not endpoint:
        return False
    return endpoint in CORS_ENDPOINTS or endpoint.partition(".")[0] in CORS_BLUEPRINTS


def allowed_origin(settings: Settings, origin: str) -> str | None:
    """What ``Access-Control-Allow-Origin`` answers ``origin`` (None: nothing)."""
    if origin in settings.cors_origins:
        return origin
    if "*" in settings.cors_origins:
        # Never combined with credentials (refused in settings): "*" is then
        # what browsers expect, and it does not vary with the caller.
        return "*"
    return None


def _preflight_endpoint(method: str) -> tuple[str | None, set[str]]:
    """The endpoint an ``OPTIONS`` preflight asks about, and its methods."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    try:
        rule, _ = adapter.match(method=method, return_rule=True)
    except HTTPException:
        return None, set()
    return rule.endpoint, set(rule.methods or ()) - {"HEAD", "OPTIONS"}


def add_cors_headers(response: Response) -> Response:
    origin = request.headers.get("Origin")
    if not origin:
        return response
    settings: Settings = current_app.config["ANALYTICS_SETTINGS"]
    allow = allowed_origin(settings, origin.rstrip("/"))
    if allow is None:
        return response
    asked = request.headers.get("Access-Control-Request-Method")
    if request.method == "OPTIONS" and asked:
        endpoint, methods = _preflight_endpoint(asked.upper())
        if not allows_cors(endpoint):
            return response
        response.headers["Access-Control-Allow-Methods"] = ", ".join(sorted(methods))
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = str(settings.cors_max_age)
    elif not allows_cors(request.endpoint):
        return response
    else:
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    response.headers["Access-Control-Allow-Origin"] = allow
    if settings.cors_credentials:
        response.headers["Access-Control-Allow-Credentials"] = "true"
    if allow != "*":
        response.vary.add("Origin")
    return response


def init_app(app: Flask) -> None:
    if app.config["ANALYTICS_SETTINGS"].cors_origins:
        app.after_request(add_cors_headers)
