"""Finding PHI in an event, taking it out before anything is written, and
putting it back for readers allowed to see it.

PHI is every value under a field whose name (case-insensitively) is in the
configured set, at any depth of ``properties``, ``traits``, ``context`` and
``metadata``, plus ``userId`` and ``anonymousId``. :func:`split` removes those
values and returns them as ``[path, value]`` pairs; the caller seals the pairs
as one blob (one AEAD operation per event, not one per field). :func:`merge`
is the inverse.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from analytics.limits import MAX_KEY_LENGTH

Path = list[str | int]
#: PHI found in an event: ``[path, value]`` pairs (:func:`split`).
Pairs = list[list[Any]]

#: Top-level event fields that are searched for PHI at any depth.
NESTED_FIELDS = ("properties", "traits", "context", "metadata")
#: Top-level fields that are PHI themselves.
IDENTITY_FIELDS = ("userId", "anonymousId")

REDACTED = "[redacted]"

#: Names that hold a user id wherever they appear (Segment's ``alias`` keeps
#: the user's former id as ``previousId``): PHI whatever the configuration.
ALWAYS_PHI = ("previousId",)


#: How many distinct field names a policy remembers the verdict of.
KNOWN_NAMES = 4096


class PhiPolicy:
    """The set of PHI field names, compared case-insensitively."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(n.strip().lower() for n in (*names, *ALWAYS_PHI) if n.strip())
        #: Verdicts by exact field name. Events repeat the same few names
        #: (and orjson hands out one interned str per name), so one dict
        #: lookup replaces ``lower()`` plus a set lookup for almost every
        #: key. Bounded: names are chosen by clients.
        self.known: dict[str, bool] = {}

    def is_phi(self, field: str) -> bool:
        verdict = self.known.get(field)
        if verdict is None:
            verdict = field.lower() in self.names
            # Only names an event may use as keys: a cached verdict also
            # tells the fast validator (analytics.events.fastpath) the key is valid.
            if len(self.known) < KNOWN_NAMES and type(field) is str and len(field) <= MAX_KEY_LENGTH:
                self.known[field] = verdict
        return verdict


def _walk(node: Any, path: tuple[str | int, ...], policy: PhiPolicy, found: list[list[Any]]) -> Any:
    """Return ``node`` without PHI, appending what was removed to ``found``.

    Hot path (every ingested event): paths are built only for containers and
    for found values, never for plain scalars; a subtree without PHI is
    returned as is, not copied.
    """
    known = policy.known
    if isinstance(node, dict):
        clean: dict[str, Any] | None = None
        for key, value in node.items():
            verdict = known.get(key)
            if verdict is None:
                verdict = policy.is_phi(key)
            if verdict:
                found.append([[*path, key], value])
                if clean is None:  # copy what came before; drop this key
                    clean = {}
                    for done, kept in node.items():
                        if done == key:
                            break
                        clean[done] = kept
                continue
            if isinstance(value, (dict, list)):
                inner = _walk(value, (*path, key), policy, found)
                if inner is not value and clean is None:
                    clean = {}
                    for done, kept in node.items():
                        if done == key:
                            break
                        clean[done] = kept
                value = inner
            if clean is not None:
                clean[key] = value
        return node if clean is None else clean
    items: list[Any] | None = None
    for i, item in enumerate(node):
        if isinstance(item, (dict, list)):
            inner = _walk(item, (*path, i), policy, found)
            if inner is not item:
                if items is None:
                    items = list(node)
                items[i] = inner
    return node if items is None else items


def split(event: dict[str, Any], policy: PhiPolicy) -> tuple[dict[str, Any], list[list[Any]]]:
    """Split ``event`` into its clear part and its PHI ``[path, value]`` pairs."""
    found: list[list[Any]] = []
    clear = dict(event)
    for field in IDENTITY_FIELDS:
        value = clear.pop(field, None)
        if value is not None:
            found.append([[field], value])
    for field in NESTED_FIELDS:
        value = clear.get(field)
        if value:
            clear[field] = _walk(value, (field,), policy, found)
    return clear, found


def merge(clear: dict[str, Any], pairs: list[list[Any]]) -> dict[str, Any]:
    """Put PHI ``pairs`` back into ``clear`` (modified in place and returned)."""
    for path, value in pairs:
        node: Any = clear
        for step in path[:-1]:
            if isinstance(step, int):
                node = node[step]
            else:
                node = node.setdefault(step, {})
        node[path[-1]] = value
    return clear


def redact(clear: dict[str, Any], pairs: list[list[Any]]) -> dict[str, Any]:
    """Like :func:`merge` but with every PHI value replaced by a marker."""
    return merge(clear, [[path, REDACTED] for path, _ in pairs])
