"""Redis memory per stored event (a typical ~250-byte event with PHI fields
sealed), measured as the growth of ``used_memory`` over many events, with the
share of each structure from ``MEMORY USAGE``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet

from analytics import Analytics, Settings
from bench.harness import event_batch
from testkit import RedisServer


def memory_per_event(total: int = 50_000) -> dict[str, Any]:

    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            settings = Settings.from_env(
                {"REDIS_URL": server.url(0), "ANALYTICS_ENCRYPTION_KEYS": Fernet.generate_key().decode()}
            )
            service = Analytics.create(settings)
            client = server.client(0)
            service.queue.ensure_groups()
            service.events.track_many(event_batch(100, "warm"))
            service.processor.drain("bench", budget=60)
            before = client.info("memory")["used_memory"]
            for start in range(0, total, 100):
                service.events.track_many(event_batch(100, "mem", start))
                if start % 5000 == 0:
                    service.processor.drain("bench", budget=60)
            service.processor.drain("bench", budget=60)
            after = client.info("memory")["used_memory"]
            sample = event_batch(1, "size")[0]
            keys = {}
            for key in client.scan_iter("analytics:*", count=1000):
                name = key.decode()
                family = (
                    name.rsplit(":", 1)[0]
                    if name.startswith(("analytics:events:user:", "analytics:events:ids:"))
                    else name
                )
                keys[family] = keys.get(family, 0) + (client.memory_usage(key, samples=0) or 0)
            stored = service.events.stored_count()
            return {
                "events": stored,
                "event_json_bytes": len(orjson.dumps(sample)),
                "bytes_per_event": (after - before) / total,
                "by_key_bytes_per_event": {
                    k: round(v / stored, 1) for k, v in sorted(keys.items(), key=lambda kv: -kv[1])[:8]
                },
            }
        finally:
            server.stop()
