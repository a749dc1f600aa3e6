"""Segment-compatible ingestion: the paths Segment SDKs post to.

``POST /v1/batch`` (also ``/v1/import``, ``/v1/b``), ``/v1/track``,
``/v1/identify``, ``/v1/page``, ``/v1/screen``, ``/v1/group``, ``/v1/alias``
and the one-letter forms ``/v1/t``, ``/v1/i``, ``/v1/p``, ``/v1/s``,
``/v1/g``, ``/v1/a``. The mapping lives in :mod:`analytics.events.segment`; this
module reads requests and answers as Segment does:

* ``200 {"success": true}`` once the valid messages are durably queued,
  whatever became of invalid ones (dead-lettered);
* ``400`` for a body that is not JSON, a batch over the limits (500 KB,
  2,500 messages) or a single call over 32 KB; ``401``/``403`` for keys;
  ``429`` with an integer ``Retry-After`` (at most 300 s); ``503`` when Redis
  cannot take the messages (nothing was accepted: the SDK retries);
* never a redirect: trailing and doubled slashes are served in place.

``GET /v1/projects/<writeKey>/settings`` serves what analytics.js loads
before it starts (:func:`settings_for`). Browsers post ``text/plain`` bodies
(no preflight): they are read as JSON whatever the ``Content-Type``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from analytics.errors import (
    AnalyticsError,
    AuthenticationError,
    PayloadTooLarge,
    RateLimited,
)
from analytics.events.segment import SHORT_PATHS, PreparedSegment, SegmentIngest, SegmentResult
from web.auth import authenticate, bearer_token, prepare_after_key, read_credentials
from web.body import json_body
from web.errors import error_response
from web.extensions import get_analytics

log = logging.getLogger(__name__)

segment = Blueprint("segment", __name__, url_prefix="/v1")

BATCH_PATHS = ("batch", "import", "b")
#: The longest wait a client is asked for (the Python SDK caps at 300 s).
MAX_RETRY_AFTER = 300


def segment_body() -> Any:
    """The request's JSON body, read once (auth may need its ``writeKey``)."""
    if "segment_body" not in g:
        g.segment_body = json_body()
    return g.segment_body


def segment_credentials() -> str | None:
    """The write key: HTTP Basic user name, Bearer token, or ``writeKey``."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, _ = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError("malformed Basic credentials") from None
        return user or None
    token = bearer_token()
    if token:
        return token
    body = segment_body()
    key = body.get("writeKey") if isinstance(body, dict) else None
    return key if isinstance(key, str) and key else None


def ingest() -> SegmentIngest:
    return get_analytics().segment


def _success(result: SegmentResult) -> tuple[Response, int]:
    if result.dead_lettered:
        # Counts and reasons only: the messages may carry PHI.
        log.info(
            "segment: %d message(s) accepted, %d dead-lettered (%s)",
            result.accepted,
            len(result.dead_lettered),
            ", ".join(sorted({d["reason"] for d in result.dead_lettered})),
        )
    return jsonify(success=True), 200


def _admit(prepare: Callable[[SegmentIngest, Any], PreparedSegment]) -> tuple[Response, int]:
    """Map and encode the messages first (no writes), then check the key and
    queue them (dead letters included) in one Redis round trip
    (:meth:`SegmentIngest.queue_as`), in ``@require``'s order of answers."""
    secret = read_credentials(segment_credentials)
    segment_ingest = ingest()
    prepared = prepare_after_key(secret, "ingest", lambda: prepare(segment_ingest, segment_body()))
    _, result = segment_ingest.queue_as(secret, prepared, where="http", remote=request.remote_addr)
    return _success(result)


def post_batch() -> tuple[Response, int]:
    return _admit(SegmentIngest.prepare_batch)


def _single_view(call: str) -> Any:
    def view() -> tuple[Response, int]:
        return _admit(lambda segment_ingest, body: segment_ingest.prepare_single(call, body))

    view.__name__ = f"post_{call}"
    return view


# Rules serve "/v1/batch/" and "//v1/batch" in place: a redirect would make an
# SDK drop the batch (requests does not re-post on every redirect status).
_RULE: dict[str, Any] = {"methods": ["POST"], "strict_slashes": False, "merge_slashes": False}
for _path in BATCH_PATHS:
    segment.add_url_rule(f"/{_path}", f"batch_{_path}", post_batch, **_RULE)
for _short, _call in SHORT_PATHS.items():
    _view = _single_view(_call)
    segment.add_url_rule(f"/{_call}", f"{_call}", _view, **_RULE)
    segment.add_url_rule(f"/{_short}", f"{_call}_{_short}", _view, **_RULE)


def settings_for(write_key: str) -> dict[str, Any]:
    """What analytics.js (``@segment/analytics-next``) loads before it starts
    (from ``cdnURL``): only the "Segment.io" integration, pointed at this
    server, and no other destination, middleware, edge function or remote
    plugin (nothing is fetched from a CDN). Metrics sampling is off: the
    library would post its own telemetry to ``metrics.host``."""
    api_host = f"{request.host}{segment.url_prefix}"
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": request.scheme,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0, "host": api_host},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


@segment.get("/projects/<write_key>/settings", strict_slashes=False)
def project_settings(write_key: str) -> Response:
    """The settings analytics.js loads: for a valid ingest key only (the
    check is counted, rate limited and audited like any other)."""
    authenticate(write_key).require("ingest")
    return jsonify(settings_for(write_key))


def _segment_error(exc: AnalyticsError) -> Response:
    status = exc.status
    if isinstance(exc, PayloadTooLarge):
        status = 400  # Segment answers 400 to payloads over its limits
    response = error_response(status, exc.code, exc.message, exc.details)
    body = response.get_json()
    # Segment SDKs log ``code`` and ``message`` from the top level.
    response.set_data(current_app.json.dumps({**body, "success": False, "code": exc.code, "message": exc.message}))
    if isinstance(exc, RateLimited):
        retry = min(max(math.ceil(exc.retry_after), 1), MAX_RETRY_AFTER)
        response.headers["Retry-After"] = str(retry)
    return response


def _too_large(exc: RequestEntityTooLarge) -> Response:
    limit = current_app.config["ANALYTICS_SETTINGS"].max_body_bytes
    return _segment_error(PayloadTooLarge(f"request body larger than {limit} bytes"))


segment.register_error_handler(AnalyticsError, _segment_error)
segment.register_error_handler(RequestEntityTooLarge, _too_large)
