"""Reading request bodies: JSON whatever the Content-Type (browsers send
``text/plain`` to avoid a preflight), gzip decoded with a size cap against
decompression bombs."""
from __future__ import annotations

import zlib
from typing import Any

import orjson
from flask import current_app, request

from analytics.errors import PayloadTooLarge, ValidationError


def _gunzip(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise ValidationError("body is not valid gzip") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body larger than {limit} bytes")
    return out


def json_body() -> Any:
    req = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup
    data = req.get_data(cache=False)
    if req.headers.get("Content-Encoding", "").lower() == "gzip":
        data = _gunzip(data, current_app.config["ANALYTICS_SETTINGS"].max_body_bytes)
    if not data:
        raise ValidationError("empty body: send a JSON object")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValidationError("body is not valid JSON") from None
