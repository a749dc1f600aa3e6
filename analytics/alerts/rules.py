"""Alert rules and where they live: one Redis hash (``analytics:alerts:rules``,
rule id -> JSON), read by every worker through a per-process cache.

A worker evaluates the rules of every series it advances, so it reads them
from memory, refreshed every ``alert_rules_ttl`` seconds: a new rule applies
to buckets closed from then on (a deleted one stops the same way). The
process that writes a rule sees the change at once.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import cast

import orjson
import redis

from analytics import keyspace

__all__ = ["CONDITIONS", "THRESHOLDS", "Rule", "RuleStore", "new_rule_id"]

#: ``anomalous``: the detector alerts; ``above``/``below``: the bucket's
#: value crosses ``value``; ``outside_band``: the value leaves the
#: detector's expected band (the forecast breach).
CONDITIONS = ("anomalous", "above", "below", "outside_band")
THRESHOLDS = ("above", "below")


def new_rule_id() -> str:
    """A random rule id (``al_`` and 16 hex digits): ids say nothing."""
    return "al_" + secrets.token_hex(8)


@dataclass(frozen=True)
class Rule:
    """One alert rule, as stored (see :mod:`analytics.alerts.schemas` for the wire shape)."""

    id: str
    metric: str
    tags: Mapping[str, str]
    condition: str
    value: float | None
    #: Seconds the condition must hold before the rule fires (0: one bucket).
    for_duration: int
    #: Seconds after a firing during which the rule does not fire again.
    cooldown: int
    webhook: str
    created: float = field(default=0.0)

    def matches(self, name: str, tags: Mapping[str, str]) -> bool:
        """Whether the series ``name`` with ``tags`` is one this rule watches."""
        return name == self.metric and all(tags.get(k) == v for k, v in self.tags.items())

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Rule:
        data = orjson.loads(raw)
        data["tags"] = dict(data.get("tags") or {})
        return cls(**data)


class RuleStore:
    def __init__(self, client: redis.Redis, ttl: float = 5.0) -> None:
        self._redis = client
        self._ttl = ttl
        self._lock = threading.Lock()
        self._by_metric: dict[str, list[Rule]] = {}
        self._loaded = -float("inf")

    # -- writing -------------------------------------------------------------
    def add(self, rule: Rule) -> None:
        self._redis.hset(keyspace.ALERT_RULES, rule.id, rule.to_json())
        self._loaded = -float("inf")

    def remove(self, rule_id: str) -> bool:
        removed = bool(self._redis.hdel(keyspace.ALERT_RULES, rule_id))
        self._loaded = -float("inf")
        return removed

    # -- reading -------------------------------------------------------------
    def get(self, rule_id: str) -> Rule | None:
        """The rule as stored now (not the cache: delivery must see a deletion)."""
        raw = cast(bytes | None, self._redis.hget(keyspace.ALERT_RULES, rule_id))
        return Rule.from_json(raw) if raw else None

    def count(self) -> int:
        return cast(int, self._redis.hlen(keyspace.ALERT_RULES))

    def all(self) -> list[Rule]:
        """Every rule as stored now, oldest first."""
        raw = cast(dict[bytes, bytes], self._redis.hgetall(keyspace.ALERT_RULES))
        return sorted((Rule.from_json(v) for v in raw.values()), key=lambda r: (r.created, r.id))

    def for_metric(self, name: str) -> list[Rule]:
        """The rules on ``name``, from the cache (refreshed every ``ttl`` s)."""
        now = time.monotonic()
        if now - self._loaded >= self._ttl:
            with self._lock:
                if now - self._loaded >= self._ttl:
                    by_metric: dict[str, list[Rule]] = {}
                    for rule in self.all():
                        by_metric.setdefault(rule.metric, []).append(rule)
                    self._by_metric = by_metric
                    self._loaded = now
        return self._by_metric.get(name, [])
