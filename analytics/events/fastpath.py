"""A fast validator for the hot ingest path: what
:data:`analytics.events.schemas.event_schema` loads, with its PHI taken out as
:func:`analytics.privacy.phi.split` takes it, in one pass over the event.

marshmallow stays the schema of record and :func:`phi.split` the definition
of what is PHI. ``load_split`` only answers "valid, and here is exactly what
loading and splitting give" or ``None``: "not valid, or not a plain JSON
shape" (a ``dict`` subclass, an object of another type); the caller then runs
marshmallow (which says why, or loads it) and :func:`phi.split`.
``tests/analytics/test_fastpath.py`` checks the equivalence with hypothesis
on valid and invalid input alike. (One difference, for Python callers only:
a key that is a ``str`` subclass equal to a name seen before passes as that
name, where the schema refuses it.)

One declaration: the field names, which are required, string lengths and
choices, which ids identify the user, the time field, the free objects and
the loaded defaults are read once, at import, from the fields of
:class:`~analytics.events.schemas.EventSchema` (not copied here, so that a
rule cannot change in one path only); a field or validator this module
cannot check stops the import rather than being skipped. The string rules
are plain tuples checked in one loop, which also collects the identity PHI
pairs: about 2% of a typical event over hand-unrolled checks.

Sealing is default-deny (:mod:`analytics.privacy.phi`): an object with
nothing declared clear is sealed whole as one pair, so the hot path only
measures it (depth, keys and items, key length, finite numbers:
``schemas._measure``) in one walk, and only declared-clear parts are walked
again, by :func:`phi.split_object` itself (so the two paths cannot differ).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from marshmallow import fields, validate

from analytics.events.schemas import (
    MAX_DEPTH,
    MAX_KEYS,
    EventSchema,
    FreeObject,
    Timestamp,
    event_schema,
    parse_time_ms,
)
from analytics.limits import MAX_KEY_LENGTH
from analytics.privacy import phi

#: A string field as :func:`load_split` checks it: name, required, least and
#: greatest length, the values allowed (None: any), whether it identifies the
#: user (``EventSchema.identified_by``), whether it is PHI itself
#: (``phi.IDENTITY_FIELDS``). Plain tuples: unpacked in one step.
StringRule = tuple[str, bool, int, int, frozenset[str] | None, bool, bool]


def read_schema(schema: EventSchema) -> tuple[tuple[StringRule, ...], str, dict[str, Any]]:
    """The tables :func:`load_split` checks ``schema``'s events by: its string
    fields (:data:`phi.IDENTITY_FIELDS` first, in the order :func:`phi.split`
    lists their pairs), its one time field, and what its optional fields load
    as when missing.

    Raises ``TypeError`` on a field or validator it cannot check, and if the
    free objects are not those :func:`phi.split` searches.
    """
    strings: dict[str, StringRule] = {}
    times: list[str] = []
    objects: set[str] = set()
    defaults: dict[str, Any] = {}
    for name, field in schema.fields.items():
        kind = type(field)
        # Read by its name; an optional field may be null (then it is skipped, as if missing).
        if field.data_key is not None or not (field.required or field.allow_none) or callable(field.load_default):
            raise TypeError(f"{name}: the fast path cannot check {field!r}")
        if not field.required:
            defaults[name] = field.load_default
        if kind is fields.String:
            low, high, choices = 0, sys.maxsize, None
            for rule in field.validators:
                if type(rule) is validate.Length and rule.equal is None:
                    low = max(low, rule.min or 0)
                    high = min(high, sys.maxsize if rule.max is None else rule.max)
                elif type(rule) is validate.OneOf and choices is None:
                    choices = frozenset(rule.choices)
                else:
                    raise TypeError(f"{name}: the fast path cannot check {rule!r}")
            identifies, is_phi = name in schema.identified_by, name in phi.IDENTITY_FIELDS
            strings[name] = (name, field.required, low, high, choices, identifies, is_phi)
        elif kind is Timestamp and not field.required and not field.validators:
            times.append(name)
        elif kind is FreeObject and not field.required:
            objects.add(name)
        else:
            raise TypeError(f"{name}: the fast path cannot check {field!r}")
    if objects != set(phi.NESTED_FIELDS) or not strings.keys() >= {*phi.IDENTITY_FIELDS, *schema.identified_by}:
        raise TypeError("The free objects are not those phi.split searches, or an identity is not a string.")
    if len(times) != 1:
        raise TypeError(f"The fast path reads one time field, not {times}.")
    ordered = [strings.pop(name) for name in phi.IDENTITY_FIELDS]
    return (*ordered, *strings.values()), times[0], defaults


_ALLOWED = frozenset(event_schema.fields)
_STRINGS, _TIME, _DEFAULTS = read_schema(event_schema)
#: The free objects, in the order phi.split walks them.
_OBJECTS = phi.NESTED_FIELDS

#: Leaf values an object may hold as they are; anything else (a ``dict``
#: subclass, a ``datetime``: only a Python caller passes one) is left to
#: the schema of record.
_SCALARS = frozenset((str, int, bool, type(None)))


class _Declined(Exception):
    """Not valid, or not a plain JSON shape: the schema of record decides."""


def _measure(node: dict[str, Any] | list[Any], depth: int) -> int:
    """``schemas._measure(node, depth)``: the keys and items below ``node``;
    raises :class:`_Declined` where it raises, and on other shapes."""
    count = len(node)
    if type(node) is dict:
        for key, value in node.items():
            if type(key) is not str or len(key) > MAX_KEY_LENGTH:
                raise _Declined
            if type(value) not in _SCALARS:
                count += _below(value, depth)
    else:
        for item in node:
            if type(item) not in _SCALARS:
                count += _below(item, depth)
    if count > MAX_KEYS:
        raise _Declined
    return count


def _below(value: Any, depth: int) -> int:
    """A value of a node at ``depth`` that is not a plain scalar: an object or
    array one level down (:func:`_measure`), or a finite float (0)."""
    kind = type(value)
    if kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            raise _Declined
        return _measure(value, depth + 1)
    if kind is not float or not math.isfinite(value):
        raise _Declined
    return 0


def load_split(raw: dict[str, Any], policy: phi.PhiPolicy) -> tuple[dict[str, Any], list[list[Any]]] | None:
    """``event_schema.load(raw)`` and the PHI pairs :func:`phi.split` finds in
    it, or None (see the module docstring).

    The event keeps ``userId`` and ``anonymousId`` (the caller hashes them;
    they are among the pairs too); its objects are as ``phi.split`` leaves
    them, PHI taken out.
    """
    if not _ALLOWED.issuperset(raw):
        return None
    found: list[list[Any]] = []
    identified = False
    for name, required, low, high, choices, identifies, is_phi in _STRINGS:
        value = raw.get(name)
        if value is None:
            if required:
                return None
            continue
        if type(value) is not str or not low <= len(value) <= high or (choices is not None and value not in choices):
            return None
        if identifies and value:
            identified = True
        if is_phi:
            found.append([[name], value])
    if not identified:
        return None
    out = _DEFAULTS | raw
    tree = policy.clear(raw["type"])
    for name in _OBJECTS:
        value = raw.get(name)
        if value is None:
            continue
        if type(value) is not dict:
            return None
        try:
            _measure(value, 1)
        except _Declined:
            return None
        if value:
            out[name] = phi.split_object(name, value, tree, policy, found)
    value = raw.get(_TIME)
    if value is not None:
        try:
            out[_TIME] = parse_time_ms(value)
        except (ValueError, OverflowError, TypeError):
            return None
    return out, found
