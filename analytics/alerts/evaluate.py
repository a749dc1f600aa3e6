"""Alert rules over the points live detection scores: the
:class:`~analytics.anomaly.live.AlertHook` the workers call, once per series
per advance, inside the compare-and-set step that writes the detector (so a
bucket is evaluated exactly once, whichever worker gets there).

Pure logic, no I/O: the rules come from a cache and the state is handed in
and returned as bytes (the ``alerts`` field of the series' detector hash).

Per rule and series the state is ``{"s": since, "f": firing, "l": last
fired, "b": last bucket seen}`` (bucket starts, epoch s):

* the condition has *held* from bucket ``since`` through the current one
  (a gap in the data, a bucket without samples, starts it again);
* the rule fires when the condition has held for ``forDuration`` seconds
  (whole buckets: 0 and anything up to one bucket mean one bucket), unless it
  fired less than ``cooldown`` seconds before; it fires once per episode,
  however long the condition goes on;
* when the condition stops, a firing threshold or band rule notifies
  ``resolved``. An anomaly is an event, not a state: an ``anomalous`` rule
  ends its episode silently.

``outside_band`` holds only once the series has been scored for the
detector's learning period: its band means little before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import orjson

from analytics.alerts.rules import Rule
from analytics.anomaly.detector import DetectorConfig
from analytics.anomaly.live import AlertOutcome, Point

__all__ = ["WARM_POINTS", "AlertEvaluator", "RuleSource"]

#: Points a series is scored before its band is trusted (the detector's learning period).
WARM_POINTS = DetectorConfig().warm_blocks * DetectorConfig().block_len


class RuleSource(Protocol):
    def for_metric(self, name: str) -> list[Rule]: ...


class AlertEvaluator:
    def __init__(self, rules: RuleSource, resolution: int) -> None:
        self._rules = rules
        self.resolution = resolution

    def evaluate(
        self, name: str, sid: str, tags: Mapping[str, str], points: Sequence[Point], prior: bytes | None
    ) -> AlertOutcome:
        """The rules' new state for a series and the notifications its new points make."""
        old = _load(prior)
        seen = int(old.get("n", 0))
        states: dict[str, dict[str, Any]] = old.get("r", {})
        kept: dict[str, dict[str, Any]] = {}
        notices: list[dict[str, Any]] = []
        for rule in self._rules.for_metric(name):
            if not rule.matches(name, tags):
                continue
            state = dict(states.get(rule.id) or {"s": None, "f": 0, "l": None, "b": None})
            notices += self._run(rule, state, name, tags, points, seen)
            kept[rule.id] = state
        new = {"n": min(WARM_POINTS, seen + len(points)), "r": kept}
        raw = orjson.dumps(new)
        return AlertOutcome(None if raw == prior else raw, notices)

    def _run(
        self,
        rule: Rule,
        state: dict[str, Any],
        name: str,
        tags: Mapping[str, str],
        points: Sequence[Point],
        seen: int,
    ) -> list[dict[str, Any]]:
        res = self.resolution
        out: list[dict[str, Any]] = []
        for i, point in enumerate(points):
            if state["b"] is not None and point.bucket - state["b"] > res:
                state["s"] = None  # a gap: the condition has not been seen to hold through it
            state["b"] = point.bucket
            if _holds(rule, point, seen + i):
                if state["s"] is None:
                    state["s"] = point.bucket
                held = point.bucket + res - state["s"]
                cooled = state["l"] is None or point.bucket - state["l"] >= rule.cooldown
                if not state["f"] and held >= rule.for_duration and cooled:
                    state["f"], state["l"] = 1, point.bucket
                    out.append(self._notice("firing", rule, name, tags, point, state["s"]))
            else:
                if state["f"] and rule.condition != "anomalous":
                    out.append(self._notice("resolved", rule, name, tags, point, state["s"]))
                state["f"], state["s"] = 0, None
        return out

    def _notice(
        self, kind: str, rule: Rule, name: str, tags: Mapping[str, str], point: Point, since: int
    ) -> dict[str, Any]:
        """A notification: names, tag values, numbers and a link, nothing else."""
        res = self.resolution
        condition: dict[str, Any] = {"type": rule.condition}
        if rule.value is not None:
            condition["value"] = rule.value
        score = point.score
        query: dict[str, Any] = {"start": since, "end": point.bucket + res, "bucket": res}
        if tags:
            query["tags"] = ",".join(f"{k}:{v}" for k, v in sorted(tags.items()))
        return {
            "rule": rule.id,
            "state": kind,
            "name": name,
            "tags": dict(sorted(tags.items())),
            "condition": condition,
            "since": since,
            "bucket": point.bucket,
            "resolution": res,
            "value": point.value,
            "score": round(score.score, 4),
            "expected": _finite(score.expected),
            "lower": _finite(score.lower),
            "upper": _finite(score.upper),
            "link": f"/v1/metrics/{quote(name, safe='.')}?{urlencode(query, safe=':,/')}",
        }


def _holds(rule: Rule, point: Point, seen: int) -> bool:
    kind, value, score = rule.condition, point.value, point.score
    if kind == "anomalous":
        return score.alert
    if kind == "above":
        return rule.value is not None and value > rule.value
    if kind == "below":
        return rule.value is not None and value < rule.value
    # outside_band
    if seen < WARM_POINTS or not (math.isfinite(score.lower) and math.isfinite(score.upper)):
        return False
    return value < score.lower or value > score.upper


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _load(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}  # a state this code cannot read starts over (no false firing: fresh states fire afresh)
    return data if isinstance(data, dict) else {}
