"""Filters on event properties: ``properties.plan=pro`` and friends.

The syntax (query parameters of ``GET /v1/events``, ``--where`` of
``analytics export``), one condition per parameter, all conditions must hold:

==========================================  =================================
parameter                                   matches events whose property...
==========================================  =================================
``properties.plan=pro``                     equals ``pro`` (also ``eq:pro``)
``properties.plan=ne:pro``                  is missing or differs from ``pro``
``properties.amount=gt:10``                 is a number > 10 (``gte``, ``lt``,
                                            ``lte`` likewise)
``properties.trial=exists:true``            is present (``exists:false``:
                                            absent)
``properties.plan.tier=gold``               nested: ``plan`` is an object
                                            whose ``tier`` equals ``gold``
==========================================  =================================

Equality compares with the property's JSON type: ``10`` matches the number
10 and the string ``"10"``, ``true``/``false`` match booleans and those
strings, ``null`` matches null. A value that itself starts with an operator
name and a colon is written with ``eq:`` (``properties.code=eq:gt:1``). The
same parameter may repeat (``properties.amount=gte:10&properties.amount=lt:100``).

Only ``properties`` can be filtered, after the records are read (nothing is
indexed by property): a selective filter over many events pages slowly, but
pages always come with a cursor. Only clear fields can be filtered (declared
clear for the ``type`` queried, or for some type when no type is given:
:meth:`analytics.privacy.phi.PhiPolicy.is_clear`); every other value is
sealed in the store, so a filter on it is refused with a 400 naming the
parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from analytics.errors import ValidationError
from analytics.privacy.phi import PhiPolicy

PREFIX = "properties."
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "exists")
NUMERIC = {"gt": float.__gt__, "gte": float.__ge__, "lt": float.__lt__, "lte": float.__le__}
MAX_FILTERS = 20
MAX_DEPTH = 8
_MISSING = object()


@dataclass(frozen=True)
class PropertyFilter:
    """One condition on the property at ``path``."""

    path: tuple[str, ...]
    op: str
    operand: Any

    @property
    def parameter(self) -> str:
        return PREFIX + ".".join(self.path)

    def matches(self, properties: Mapping[str, Any]) -> bool:
        value: Any = properties
        for step in self.path:
            if not isinstance(value, Mapping) or step not in value:
                value = _MISSING
                break
            value = value[step]
        if self.op == "exists":
            return (value is not _MISSING) == self.operand
        if self.op == "eq":
            return value is not _MISSING and _equals(value, self.operand)
        if self.op == "ne":
            return value is _MISSING or not _equals(value, self.operand)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return bool(NUMERIC[self.op](float(value), self.operand))


def _equals(value: Any, text: str) -> bool:
    if isinstance(value, bool):
        return text == ("true" if value else "false")
    if isinstance(value, (int, float)):
        number = _number(text)
        return number is not None and float(value) == number
    if value is None:
        return text == "null"
    return isinstance(value, str) and value == text


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_one(parameter: str, raw: str, policy: PhiPolicy, event_type: str | None = None) -> PropertyFilter:
    """The filter of one ``properties.PATH=VALUE`` parameter on events of
    ``event_type`` (None: of any type).

    Raises :class:`ValidationError` naming the parameter (never the value:
    it may be PHI).
    """

    def invalid(message: str) -> ValidationError:
        return ValidationError("invalid property filter", {parameter: [message]})

    path = tuple(parameter[len(PREFIX) :].split("."))
    if not parameter.startswith(PREFIX) or not all(path):
        raise invalid("Write properties.NAME (nested: properties.NAME.SUBNAME).")
    if len(path) > MAX_DEPTH:
        raise invalid(f"At most {MAX_DEPTH} levels.")
    if not policy.is_clear(event_type, ("properties", *path)):
        raise invalid(
            "Not a clear field: its values are sealed (encrypted) and cannot be filtered on. "
            "Declare it clear for the event type (POST /v1/event-types, clear); PHI fields never are."
        )
    op, sep, operand = raw.partition(":")
    if not sep or op not in OPERATORS:
        op, operand = "eq", raw
    if op in NUMERIC:
        number = _number(operand)
        if number is None:
            raise invalid(f"{op}: needs a number, as in {op}:10.")
        return PropertyFilter(path, op, number)
    if op == "exists":
        if operand not in ("true", "false"):
            raise invalid("Write exists:true or exists:false.")
        return PropertyFilter(path, op, operand == "true")
    return PropertyFilter(path, op, operand)


def parse_filters(query: Mapping[str, Any], policy: PhiPolicy) -> list[PropertyFilter]:
    """The filters among ``query``'s parameters (those starting with
    ``properties.``; a value may be a list when the parameter repeats)."""
    filters: list[PropertyFilter] = []
    event_type = query.get("type")
    event_type = event_type if isinstance(event_type, str) and event_type else None
    for parameter, values in query.items():
        if not parameter.startswith(PREFIX):
            continue
        for raw in values if isinstance(values, (list, tuple)) else [values]:
            if not isinstance(raw, str):
                raise ValidationError("invalid property filter", {parameter: ["Not a string."]})
            filters.append(parse_one(parameter, raw, policy, event_type))
    if len(filters) > MAX_FILTERS:
        raise ValidationError("too many property filters", {"properties": [f"At most {MAX_FILTERS} conditions."]})
    return filters


def matcher(filters: list[PropertyFilter]) -> Callable[[Mapping[str, Any]], bool] | None:
    """One predicate over a record's clear properties (None: no filter)."""
    if not filters:
        return None
    return lambda properties: all(f.matches(properties) for f in filters)
