"""Reading request bodies: JSON whatever the Content-Type (browsers send
``text/plain`` to avoid a preflight), gzip decoded with a size cap against
decompression bombs, nesting capped at :data:`MAX_JSON_DEPTH` levels.

A body the server could not read as the client framed it (a chunked body
with a bad chunk size) is the client's error too: a 400, like bad JSON."""

from __future__ import annotations

import zlib
from typing import Any, cast

import orjson
from flask import Request, current_app, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from analytics.errors import PayloadTooLarge, ValidationError

#: Deepest nesting of a body (the outer object or array is level 1). No
#: valid request comes near it (event fields nest at most
#: :data:`analytics.events.schemas.MAX_DEPTH` levels); without it, bodies
#: between 255 and 1024 levels (orjson reads 1024) failed later in code
#: that walks or re-encodes them (orjson writes 254).
MAX_JSON_DEPTH = 64


def too_deep(data: bytes, value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (read from ``data``) nests deeper than ``limit``."""
    # A body with no more brackets than the limit cannot nest deeper: one
    # C-speed count spares the walk to nearly every single-event body.
    if data.count(b"{") + data.count(b"[") <= limit:
        return False
    level: list[Any] = [value]
    for _ in range(limit):
        deeper: list[Any] = []
        for node in level:
            if isinstance(node, dict):
                deeper += [v for v in node.values() if isinstance(v, (dict, list))]
            elif isinstance(node, list):
                deeper += [v for v in node if isinstance(v, (dict, list))]
        if not deeper:
            return False
        level = deeper
    return True


def gunzip(data: bytes, limit: int) -> bytes:
    """``data`` gunzipped, refused past ``limit`` bytes (a zip bomb) or when not gzip."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise ValidationError("body is not valid gzip") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body larger than {limit} bytes")
    return out


def _raw_body(req: Request) -> bytes:
    """The body as sent, at most ``MAX_CONTENT_LENGTH`` bytes (else 413).

    A server that ends the body's stream itself (gunicorn:
    ``wsgi.input_terminated``) is read directly. Werkzeug would read it
    through a ``LimitedStream`` (as soon as ``MAX_CONTENT_LENGTH`` is set), a
    loop of Python reads: 49k more instructions for a single-event request
    under gunicorn (1.404M against 1.355M, callgrind), more than a quarter of
    what it cost beyond the bare endpoint's. And it cut a chunked body (no
    ``Content-Length``) at the limit: a 400 for bad JSON instead of a 413.
    """
    environ = req.environ
    if "wsgi.input_terminated" not in environ:
        return req.get_data(cache=False)  # werkzeug reads no more than Content-Length
    limit, length = req.max_content_length, req.content_length
    if limit is not None and length is not None and length > limit:
        raise RequestEntityTooLarge()
    stream = environ["wsgi.input"]
    if length is not None:
        return cast(bytes, stream.read(length))
    if limit is None:
        return cast(bytes, stream.read())
    data = cast(bytes, stream.read(limit + 1))
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


def is_framing_error(exc: Exception) -> bool:
    """Whether reading a body failed on the client's framing: gunicorn
    raises its ``InvalidChunkSize``, ``ChunkMissingTerminator``,
    ``InvalidChunkExtension`` or ``NoMoreData`` (a chunk cut short);
    werkzeug's server an ``OSError`` ("Invalid chunk header"). A connection
    that broke mid-body (``OSError`` too) gets the 400 it can no longer read."""
    return isinstance(exc, (ValueError, OSError)) or type(exc).__module__.startswith("gunicorn.")


def json_body() -> Any:
    req = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup
    try:
        data = _raw_body(req)
    except Exception as exc:
        if not is_framing_error(exc):
            raise
        # The exception's text is not passed on: it may quote the client's bytes.
        raise BadRequest("the body could not be read: malformed chunked framing") from None
    if req.headers.get("Content-Encoding", "").lower() == "gzip":
        data = gunzip(data, current_app.config["ANALYTICS_SETTINGS"].max_body_bytes)
    if not data:
        raise ValidationError("empty body: send a JSON object")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValidationError("body is not valid JSON") from None
    if too_deep(data, value):
        raise ValidationError(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value
