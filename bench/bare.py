"""The reference for HTTP ingest: a bare Flask endpoint that only parses the
JSON body and LPUSHes it. ``gunicorn "bench.bare:create_app()"``."""

from __future__ import annotations

import os

import orjson
import redis
from flask import Flask, request


def create_app() -> Flask:
    app = Flask(__name__)
    store = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))

    @app.post("/v1/events")
    def ingest():  # type: ignore[no-untyped-def]
        body = orjson.loads(request.get_data())
        store.lpush("bare:events", orjson.dumps(body))
        return {"accepted": 1}, 202

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return {"status": "ok"}

    return app
