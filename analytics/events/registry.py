"""The registry of event types: defaults from configuration, plus types
registered at run time (admin API), kept in Redis so every process agrees.

A type also says which of its fields stay clear (``clear``: dotted paths
such as ``properties.plan``): everything else under ``properties``,
``traits``, ``context`` and ``metadata`` is sealed
(:mod:`analytics.privacy.phi`). :meth:`EventTypeRegistry.clear_tree` gives
the sealing its tree of clear paths per type.

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
from analytics.privacy import phi
from analytics.privacy.screening import looks_identifying
from analytics.settings import Settings

TYPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,63}$")
PRIORITIES = keyspace.PRIORITIES
#: A clear path: a free object, then 1 to 7 field names.
CLEAR_STEP = re.compile(r"^[A-Za-z0-9_$-][A-Za-z0-9 _$-]{0,63}$")
MAX_CLEAR_PATHS = 100


@dataclass(frozen=True)
class EventType:
    name: str
    priority: str = "normal"
    description: str = ""
    builtin: bool = False
    #: Dotted paths whose values stay clear (screened) in events of this type.
    clear: tuple[str, ...] = ()


def _parse_default(spec: str) -> EventType:
    name, _, priority = spec.partition(":")
    return EventType(name=name.strip(), priority=(priority.strip() or "normal"), builtin=True)


def check_type_name(name: str) -> None:
    # Type names become Redis key names and clear labels: never identifiers.
    if not TYPE_NAME.match(name) or looks_identifying(name):
        raise ValidationError(
            "invalid event type name",
            {
                "name": [
                    "1-64 characters: letters, digits, space and _ . : / - (starting with a letter or digit), "
                    "not looking like an identifier (phone, date, record number...)"
                ]
            },
        )


def check_clear_paths(paths: list[str], policy: phi.PhiPolicy) -> tuple[str, ...]:
    """``paths`` as a type's ``clear``; raises :class:`ValidationError`
    naming the paths refused: not ``properties|traits|context|metadata``
    then field names, or through a PHI field name (those are sealed
    whatever is declared)."""
    if len(paths) > MAX_CLEAR_PATHS:
        raise ValidationError("too many clear paths", {"clear": [f"At most {MAX_CLEAR_PATHS} paths."]})
    errors: dict[str, list[str]] = {}
    for path in paths:
        steps = path.split(".")
        if (
            steps[0] not in phi.NESTED_FIELDS
            or not 2 <= len(steps) <= 8
            or not all(CLEAR_STEP.match(step) for step in steps[1:])
            or looks_identifying(path)
        ):
            errors[path] = [
                "Write FIELD.NAME[.NAME...] (at most 8 steps), FIELD one of "
                f"{', '.join(phi.NESTED_FIELDS)}, names of letters, digits, space, _ $ -."
            ]
        elif any(policy.is_phi(step) for step in steps[1:]):
            errors[path] = ["A PHI field name: always sealed, it cannot be declared clear."]
    if errors:
        raise ValidationError("invalid clear paths", {"clear": errors})
    return tuple(dict.fromkeys(paths))


class EventTypeRegistry:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._ttl = settings.registry_ttl
        self._defaults = {t.name: t for t in map(_parse_default, settings.event_types)}
        self._cache: dict[str, EventType] = dict(self._defaults)
        self._trees: dict[str | None, phi.ClearTree] = {}
        self._loaded_at = float("-inf")

    def _refresh(self) -> None:
        """Reload the registered types once ``registry_ttl`` has passed."""
        now = time.monotonic()
        if now - self._loaded_at < self._ttl:
            return
        types = dict(self._defaults)
        for name, raw in cast(dict[bytes, bytes], self._redis.hgetall(keyspace.EVENT_TYPES)).items():
            data = orjson.loads(raw)
            data["clear"] = tuple(data.get("clear", ()))
            types[name.decode()] = EventType(name=name.decode(), **data)
        if types != self._cache:
            self._trees = {}
        self._cache = types
        self._loaded_at = now

    def get(self, name: str) -> EventType | None:
        # Once per ingested event: the TTL is checked here, a call less.
        if time.monotonic() - self._loaded_at >= self._ttl:
            self._refresh()
        return self._cache.get(name)

    def clear_tree(self, name: str | None) -> phi.ClearTree:
        """The clear paths of events of type ``name`` (built-in ones
        included) as a tree; None: what is clear in some type (filters
        without a type). Once per ingested event: cached per type."""
        tree = self._trees.get(name)
        if tree is None or time.monotonic() - self._loaded_at >= self._ttl:
            self._refresh()
            if name is not None and name not in self._cache:
                return phi.BUILTIN_TREE  # not cached: such names come from clients
            if name is None:
                declared = [phi.clear_tree(t.clear) for t in self._cache.values()]
            else:
                event_type = self._cache.get(name)
                declared = [phi.clear_tree(event_type.clear)] if event_type else []
            tree = self._trees[name] = phi.merge_trees(phi.BUILTIN_TREE, *declared)
        return tree

    def all(self) -> list[EventType]:
        self._refresh()
        return sorted(self._cache.values(), key=lambda t: t.name)

    def register(
        self, name: str, priority: str = "normal", description: str = "", clear: tuple[str, ...] = ()
    ) -> EventType:
        check_type_name(name)
        if priority not in PRIORITIES:
            raise ValidationError("invalid priority", {"priority": [f"one of {', '.join(PRIORITIES)}"]})
        if len(description) > 500:
            raise ValidationError("description too long", {"description": ["at most 500 characters"]})
        event_type = EventType(name=name, priority=priority, description=description, clear=tuple(clear))
        data = asdict(event_type)
        del data["name"], data["builtin"]
        self._redis.hset(keyspace.EVENT_TYPES, name, orjson.dumps(data))
        self._loaded_at = float("-inf")
        self._trees = {}
        return event_type
