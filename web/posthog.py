"""PostHog-compatible ingestion: the paths PostHog SDKs post to.

``POST /batch/``, ``/capture/``, ``/e/``, ``/i/v0/e/`` (also without the
trailing slash): the body is JSON, gzip (``Content-Encoding: gzip``,
posthog-js's ``?compression=gzip-js``, or recognized by its magic number, as
posthog-js now sends it), or a form whose ``data`` field is the
JSON in base64 (posthog-js's older ``?compression=base64``). The project
token (``api_key``, ``token`` or ``properties.token``) is an ingest key. The
events are mapped (:mod:`analytics.events.posthog`) to Segment messages and
queued by the Segment ingest: the same validation, PHI sealing and dead
letters. Answers as PostHog's: ``200 {"status": 1}`` once queued; errors
carry PostHog's ``type``, ``code`` and ``detail`` besides ours.

``/decide/`` and ``/flags/`` (any method) answer "no feature flags", and
``/array/<token>/config`` a remote config that turns every optional feature
off, so that posthog-js starts cleanly and loads nothing more.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request

from analytics.errors import PayloadTooLarge, ValidationError
from analytics.events.posthog import to_segment_batch
from analytics.events.segment import PreparedSegment
from web.auth import prepare_after_key, read_credentials
from web.body import gunzip
from web.extensions import get_analytics

posthog = Blueprint("posthog", __name__)

CAPTURE_PATHS = ("/batch", "/capture", "/e", "/i/v0/e", "/track")
#: Deepest nesting accepted before the events are validated (their own
#: limit is lower): deeper bodies could not be re-encoded as dead letters.
MAX_BODY_DEPTH = 64
GZIP_MAGIC = b"\x1f\x8b"
#: PostHog's error ``type`` by our status.
_ERROR_TYPES = {401: "authentication_error", 403: "authentication_error", 429: "rate_limited"}


def _form_data() -> bytes:
    """The JSON of a ``data=<base64>`` form body (posthog-js's base64 mode)."""
    value = request.form.get("data")
    if value is None:
        raise ValidationError("form body without a data field")
    try:
        return base64.b64decode(value.replace(" ", "+"), validate=False)
    except (binascii.Error, ValueError):
        raise ValidationError("data is not valid base64") from None


def _too_deep(data: bytes, value: Any) -> bool:
    if data.count(b"{") + data.count(b"[") <= MAX_BODY_DEPTH:
        return False
    level: list[Any] = [value]
    for _ in range(MAX_BODY_DEPTH):
        level = [
            child
            for item in level
            if isinstance(item, (dict, list))
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


def capture_body() -> Any:
    """The request's events as sent, decoded once (the key is in them)."""
    if "posthog_body" in g:
        return g.posthog_body
    limit = current_app.config["ANALYTICS_SETTINGS"].max_body_bytes
    compression = (request.args.get("compression") or "").lower()
    content_type = request.mimetype
    if content_type == "application/x-www-form-urlencoded" or compression == "base64":
        data = _form_data()
    else:
        data = request.get_data(cache=False)
        if (
            compression in ("gzip", "gzip-js")
            or request.headers.get("Content-Encoding", "").lower() == "gzip"
            # posthog-js no longer says it gzips (no ``compression`` parameter):
            # the gzip magic number tells, as PostHog's own capture reads it.
            or data[:2] == GZIP_MAGIC
        ):
            data = gunzip(data, limit)
        elif compression and compression != "none":
            raise ValidationError(f"compression {compression!r} is not supported: use gzip-js, base64 or none")
    if not data:
        raise ValidationError("empty body: send a JSON object")
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValidationError("body is not valid JSON") from None
    if _too_deep(data, body):
        raise ValidationError(f"body nested deeper than {MAX_BODY_DEPTH} levels")
    # posthog-js sends its clock as ``sent_at`` (POST) or ``_``, in ms.
    g.posthog_body = to_segment_batch(body, request.args.get("sent_at") or request.args.get("_"))
    return g.posthog_body


def _token() -> str | None:
    token, _ = capture_body()
    return token if isinstance(token, str) else None


def _prepare() -> PreparedSegment:
    _, messages = capture_body()
    limit = current_app.config["ANALYTICS_SETTINGS"].max_batch_events
    if len(messages) > limit:
        raise PayloadTooLarge(f"more than {limit} events in one request")
    return get_analytics().segment.prepare(messages)


def capture() -> tuple[Response, int]:
    secret = read_credentials(_token)
    prepared = prepare_after_key(secret, "ingest", _prepare)
    get_analytics().segment.queue_as(secret, prepared, where="http", remote=request.remote_addr)
    return jsonify(status=1), 200


#: What ``/flags/`` (and ``/decide/``) answer: no flags, every optional
#: feature of posthog-js off (nothing more is loaded from this server or a CDN).
NO_FLAGS: dict[str, Any] = {
    "flags": {},
    "featureFlags": {},
    "featureFlagPayloads": {},
    "errorsWhileComputingFlags": False,
    "quotaLimited": [],
    "config": {"enable_collect_everything": False},
    "toolbarParams": {},
    "isAuthenticated": False,
    "supportedCompression": ["gzip", "gzip-js"],
    "sessionRecording": False,
    "heatmaps": False,
    "surveys": False,
    "siteApps": [],
    "capturePerformance": False,
    "autocapture_opt_out": True,
    "autocaptureExceptions": False,
    "elementsChainAsString": True,
    "defaultIdentifiedOnly": True,
}


def flags() -> Response:
    return jsonify(NO_FLAGS)


def remote_config(token: str) -> Response:
    return jsonify({"token": token, **{k: v for k, v in NO_FLAGS.items() if "lags" not in k}, "hasFeatureFlags": False})


# Served with or without the trailing slash, never redirected (an SDK would
# drop the events).
_RULE: dict[str, Any] = {"strict_slashes": False, "merge_slashes": False}
for _path in CAPTURE_PATHS:
    posthog.add_url_rule(_path, f"capture_{_path.strip('/').replace('/', '_')}", capture, methods=["POST"], **_RULE)
for _path in ("/decide", "/flags"):
    posthog.add_url_rule(_path, _path.strip("/"), flags, methods=["GET", "POST"], **_RULE)
posthog.add_url_rule("/array/<token>/config", "remote_config", remote_config, methods=["GET"], **_RULE)


def _posthog_error(response: Response) -> Response:
    """Our error answers (the app's handlers: audit, outage log, scrubbed
    details) with PostHog's ``type``, ``code`` and ``detail`` added: PostHog
    SDKs log ``detail``."""
    if response.status_code < 400 or not response.is_json:
        return response
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(error, dict):
        return response
    error_type = _ERROR_TYPES.get(response.status_code, "validation_error")
    extra = {"type": error_type, "code": error.get("code"), "detail": error.get("message")}
    response.set_data(current_app.json.dumps({**body, **extra}))
    return response


posthog.after_request(_posthog_error)
