"""A fast validator for the hot ingest path: what
:data:`analytics.events.schemas.event_schema` loads, with its PHI taken out as
:func:`analytics.privacy.phi.split` takes it, in one pass over the event.

marshmallow stays the schema of record and :func:`phi.split` the definition
of what is PHI: this module takes its field names, lengths and choices from
the schema's own field objects. ``load_split`` only answers "valid, and here
is exactly what loading and splitting give" or ``None``: "not valid, or not
a plain JSON shape" (a ``dict`` subclass, an object of another type); the
caller then runs marshmallow (which says why, or loads it) and
:func:`phi.split`. ``tests/analytics/test_fastpath.py`` checks the
equivalence with hypothesis on valid and invalid input alike. (One
difference, for Python callers only: a key that is a ``str`` subclass equal
to a name seen before passes as that name, where the schema refuses it.)

One pass, not two: checking an object's limits (depth, keys and items, key
length, finite numbers: ``schemas._measure``) and finding its PHI
(``phi._walk``) both visit every key; on the hot path each visit is a
measurable share of the request.
"""
from __future__ import annotations

import math
from typing import Any

from marshmallow import validate

from analytics.events.schemas import MAX_DEPTH, MAX_KEY_LENGTH, MAX_KEYS, event_schema, parse_time_ms
from analytics.privacy import phi

_FIELDS = event_schema.fields
_ALLOWED = frozenset(_FIELDS)


def _length(name: str) -> tuple[int, int]:
    for validator in _FIELDS[name].validators:
        if isinstance(validator, validate.Length):
            return validator.min or 0, validator.max or 2**31
    raise LookupError(name)


def _choices(name: str) -> frozenset[str]:
    for validator in _FIELDS[name].validators:
        if isinstance(validator, validate.OneOf):
            return frozenset(validator.choices)
    raise LookupError(name)


_TYPE_LEN = _length("type")
#: (field, min length, max length) of the optional string ids.
_IDS = tuple((name, *_length(name)) for name in ("userId", "anonymousId", "messageId"))
_PRIORITIES = _choices("priority")
_EMPTY = {name: None for name in _ALLOWED}


#: Leaf values an object may hold as they are; anything else (a ``dict``
#: subclass, a ``datetime``: only a Python caller passes one) is left to
#: the schema of record.
_SCALARS = frozenset((str, int, bool, type(None)))


class _Declined(Exception):
    """Not valid, or not a plain JSON shape: the schema of record decides."""


def _split(node: dict[str, Any] | list[Any], depth: int, path: tuple[str | int, ...],
           policy: phi.PhiPolicy, found: list[list[Any]]) -> tuple[int, Any]:
    """``_measure(node, depth)`` and ``phi._walk(node, path, ...)`` at once:
    the keys and items below ``node``, and ``node`` without PHI (``node``
    itself when it holds none). PHI values are only measured. Raises
    :class:`_Declined` where ``_measure`` raises, and on other shapes."""
    count = len(node)
    if type(node) is dict:
        known = policy.known
        clean: dict[str, Any] | None = None
        for key, value in node.items():
            verdict = known.get(key)  # only names valid as keys are cached
            if verdict is None:
                if type(key) is not str or len(key) > MAX_KEY_LENGTH:
                    raise _Declined
                verdict = policy.is_phi(key)
            if type(value) not in _SCALARS:
                # A PHI value goes whole: walked for its limits only.
                inner_count, inner = _below(value, depth, (*path, key), policy, [] if verdict else found)
                count += inner_count
                if inner is not value and not verdict:
                    if clean is None:
                        clean = dict(node)
                    clean[key] = inner
            if verdict:
                found.append([[*path, key], value])
                if clean is None:
                    clean = dict(node)  # copied where PHI is first met: most objects hold none
                del clean[key]
        if count > MAX_KEYS:
            raise _Declined
        return count, node if clean is None else clean
    items: list[Any] | None = None
    for i, item in enumerate(node):
        if type(item) not in _SCALARS:
            inner_count, inner = _below(item, depth, (*path, i), policy, found)
            count += inner_count
            if inner is not item:
                if items is None:
                    items = list(node)
                items[i] = inner
    if count > MAX_KEYS:
        raise _Declined
    return count, node if items is None else items


def _below(value: Any, depth: int, path: tuple[str | int, ...], policy: phi.PhiPolicy,
           found: list[list[Any]]) -> tuple[int, Any]:
    """A value of a node at ``depth`` that is not a plain scalar: an object or
    array one level down (:func:`_split`), or a finite float (0, itself)."""
    kind = type(value)
    if kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            raise _Declined
        return _split(value, depth + 1, path, policy, found)
    if kind is not float or not math.isfinite(value):
        raise _Declined
    return 0, value


def load_split(raw: dict[str, Any],
               policy: phi.PhiPolicy) -> tuple[dict[str, Any], list[list[Any]]] | None:
    """``event_schema.load(raw)`` and the PHI pairs :func:`phi.split` finds in
    it, or None (see the module docstring).

    The event keeps ``userId`` and ``anonymousId`` (the caller hashes them;
    they are among the pairs too); its objects are as ``phi.split`` leaves
    them, PHI taken out.
    """
    if not _ALLOWED.issuperset(raw):
        return None
    event_type = raw.get("type")
    if type(event_type) is not str or not _TYPE_LEN[0] <= len(event_type) <= _TYPE_LEN[1]:
        return None
    for name, low, high in _IDS:
        value = raw.get(name)
        if value is not None and (type(value) is not str or not low <= len(value) <= high):
            return None
    user_id, anonymous_id = raw.get("userId"), raw.get("anonymousId")
    if not user_id and not anonymous_id:
        return None
    priority = raw.get("priority")
    if priority is not None and priority not in _PRIORITIES:
        return None
    out = {**_EMPTY, **raw}
    found: list[list[Any]] = []
    if user_id is not None:
        found.append([["userId"], user_id])
    if anonymous_id is not None:
        found.append([["anonymousId"], anonymous_id])
    for name in phi.NESTED_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        if type(value) is not dict:
            return None
        try:
            out[name] = _split(value, 1, (name,), policy, found)[1]
        except _Declined:
            return None
    timestamp = raw.get("timestamp")
    if timestamp is not None:
        try:
            out["timestamp"] = parse_time_ms(timestamp)
        except (ValueError, OverflowError, TypeError):
            return None
    return out, found
