"""The naive baseline: one Celery task per event, as a first Flask+Celery
design would do it (validate in the task, one Redis write per event).

``celery -A bench.naive worker`` and ``gunicorn "bench.naive:create_app()"``.
"""

from __future__ import annotations

import os

import marshmallow
import orjson
import redis
from celery import Celery
from flask import Flask, request

from analytics.events.schemas import event_schema

celery = Celery("naive", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"))
celery.conf.update(task_ignore_result=True, worker_prefetch_multiplier=4)
_store = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@celery.task(name="naive.store_event")
def store_event(event: dict) -> None:
    try:
        data = event_schema.load(event)
    except marshmallow.ValidationError:
        return
    pipe = _store.pipeline()
    pipe.hset(f"naive:events:{data['type']}", data["messageId"], orjson.dumps(event))
    pipe.zadd(f"naive:time:{data['type']}", {data["messageId"]: 0})
    pipe.execute()


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/v1/events")
    def ingest():  # type: ignore[no-untyped-def]
        body = orjson.loads(request.get_data())
        events = body["batch"] if "batch" in body else [body]
        for event in events:
            store_event.delay(event)
        return {"accepted": len(events)}, 202

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return {"status": "ok"}

    return app
