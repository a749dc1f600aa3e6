"""The registry of event types: defaults from configuration, plus types
registered at run time (admin API), kept in Redis so every process agrees.

Processes cache the Redis part for ``registry_ttl`` seconds; the process that
registers a type sees it at once.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import cast

import orjson
import redis

from analytics import keyspace
from analytics.errors import ValidationError
from analytics.settings import Settings

TYPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,63}$")
PRIORITIES = keyspace.PRIORITIES


@dataclass(frozen=True)
class EventType:
    name: str
    priority: str = "normal"
    description: str = ""
    builtin: bool = False


def _parse_default(spec: str) -> EventType:
    name, _, priority = spec.partition(":")
    return EventType(name=name.strip(), priority=(priority.strip() or "normal"), builtin=True)


def check_type_name(name: str) -> None:
    if not TYPE_NAME.match(name):
        raise ValidationError(
            "invalid event type name",
            {"name": ["1-64 characters: letters, digits, space and _ . : / - (starting with a letter or digit)"]},
        )


class EventTypeRegistry:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._ttl = settings.registry_ttl
        self._defaults = {t.name: t for t in map(_parse_default, settings.event_types)}
        self._cache: dict[str, EventType] = dict(self._defaults)
        self._loaded_at = float("-inf")

    def _refresh(self) -> None:
        """Reload the registered types once ``registry_ttl`` has passed."""
        now = time.monotonic()
        if now - self._loaded_at < self._ttl:
            return
        types = dict(self._defaults)
        for name, raw in cast(dict[bytes, bytes], self._redis.hgetall(keyspace.EVENT_TYPES)).items():
            data = orjson.loads(raw)
            types[name.decode()] = EventType(name=name.decode(), **data)
        self._cache = types
        self._loaded_at = now

    def get(self, name: str) -> EventType | None:
        # Once per ingested event: the TTL is checked here, a call less.
        if time.monotonic() - self._loaded_at >= self._ttl:
            self._refresh()
        return self._cache.get(name)

    def all(self) -> list[EventType]:
        self._refresh()
        return sorted(self._cache.values(), key=lambda t: t.name)

    def register(self, name: str, priority: str = "normal", description: str = "") -> EventType:
        check_type_name(name)
        if priority not in PRIORITIES:
            raise ValidationError("invalid priority", {"priority": [f"one of {', '.join(PRIORITIES)}"]})
        if len(description) > 500:
            raise ValidationError("description too long", {"description": ["at most 500 characters"]})
        event_type = EventType(name=name, priority=priority, description=description)
        data = asdict(event_type)
        del data["name"], data["builtin"]
        self._redis.hset(keyspace.EVENT_TYPES, name, orjson.dumps(data))
        self._loaded_at = float("-inf")
        return event_type
