"""Every error leaves the app as the contract's JSON error, mapped here only.

Error bodies name fields and never echo input values (they may be PHI).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from analytics.errors import AnalyticsError, NotReplicated, PermissionDenied, RateLimited, StoreUnavailable
from analytics.logs import scrubbing_filter
from analytics.outage import OutageLog
from analytics.privacy.apikeys import KeyForbidden
from analytics.redis_client import store_error
from web.extensions import get_analytics

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    response = jsonify(body)
    response.status_code = status
    return response


def _scrub_names(details: Any) -> Any:
    """Error details are keyed by the client's field names; a client may put
    PHI in a *name* (``{"jane@example.org": 1}`` as an unknown field). Keys
    that look like PHI are replaced; messages are ours and hold no values."""
    if isinstance(details, dict):
        scrub = scrubbing_filter().scrub
        return {
            (k if not isinstance(k, str) or scrub(k) == k else "[redacted]"): _scrub_names(v)
            for k, v in details.items()
        }
    if isinstance(details, list):
        return [_scrub_names(v) for v in details]
    return details


def _analytics_error(exc: AnalyticsError) -> Response:
    response = error_response(exc.status, exc.code, exc.message, _scrub_names(exc.details))
    if isinstance(exc, RateLimited | NotReplicated):
        response.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, StoreUnavailable):
        outage(current_app).went_down(exc.message)
    if isinstance(exc, PermissionDenied):
        _audit_denied(exc)
    return response


def _audit_denied(exc: PermissionDenied) -> None:
    """Every 403 is audited (``access.denied``): the key, the route's
    pattern (``/v1/metrics/<path:name>``: never the values in the path)
    and what was required."""
    key = g.get("api_key")
    key_id = exc.key_id if isinstance(exc, KeyForbidden) and exc.key_id else (key.id if key else "")
    required = exc.required if isinstance(exc, KeyForbidden) else ""
    rule = request.url_rule.rule if request.url_rule is not None else "-"
    get_analytics().access.audit_denied(key_id, rule, required, request.remote_addr)


def outage(app: Flask) -> OutageLog:
    return app.extensions["outage"]


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    message = exc.description or exc.name
    if status == 413:
        message = "request body too large"
    return error_response(status, _HTTP_CODES.get(status, "error"), message)


def _unexpected(exc: Exception) -> Response:
    # Redis away or full wherever it happened (not only where a view said
    # so): 503, never 500.
    domain = store_error(exc)
    if domain is not None:
        return _analytics_error(domain)
    # Only the type: an exception's message may carry input values (PHI).
    log.error("unhandled %s while serving a request", type(exc).__name__)
    return error_response(500, "internal_error", "internal error")


def init_app(app: Flask) -> None:
    web_outage = app.extensions["outage"] = OutageLog("web")

    def note_recovery(response: Response) -> Response:
        # Any answer below 500 from an API view means Redis answered it.
        if web_outage.down and response.status_code < 500 and request.blueprint not in (None, "health", "metrics"):
            web_outage.came_back()
        return response

    app.after_request(note_recovery)
    app.register_error_handler(AnalyticsError, _analytics_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
