"""The hot-path validator must agree with the marshmallow schema of record and
:func:`phi.split` on every input: same accept/reject decision, same loaded
value, same PHI taken out; and it must follow the schema's declaration when
that changes."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import marshmallow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import fields, validate

from analytics.events import fastpath
from analytics.events.fastpath import load_split, read_schema
from analytics.events.schemas import EventSchema, FreeObject, Timestamp, event_schema
from analytics.privacy import phi
from analytics.settings import DEFAULT_PHI_FIELDS

#: Declared clear as a type would declare them: a leaf, a PHI name (sealed
#: anyway), a whole subtree and a whole object, so that both paths walk.
DECLARED = phi.clear_tree(["properties.plan", "properties.email", "properties.path", "context.app", "traits"])
POLICY = phi.PhiPolicy(DEFAULT_PHI_FIELDS.split(","), clear=lambda _type: phi.merge_trees(phi.BUILTIN_TREE, DECLARED))

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
#: Names that are PHI under the default policy, near misses, and any text.
names = st.one_of(st.sampled_from(["email", "Email", "EMAIL", "emails", "phone", "ssn", "plan"]), st.text(max_size=5))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=12,
)
deep = st.recursive(
    st.integers(), lambda inner: st.dictionaries(st.just("k"), inner, min_size=1, max_size=1), max_leaves=12
)
lengthy = st.integers(0, 300).map(lambda n: "x" * n)
times = st.one_of(
    st.just("2026-11-28T10:00:00.123Z"),
    st.just("2026-11-28T10:00:00+02:00"),
    st.just("2026-11-28 10:00"),
    st.just("not a time"),
    st.just("1795860000"),
    st.floats(allow_nan=True),
    st.integers(-5, 10**12),
    st.booleans(),
)
field_values = {
    "type": st.one_of(st.sampled_from(["page_view", "", "x" * 64, "x" * 65]), json_values),
    "userId": st.one_of(lengthy, json_values),
    "anonymousId": st.one_of(lengthy, json_values),
    "messageId": st.one_of(lengthy, json_values),
    "priority": st.one_of(st.sampled_from(["low", "normal", "high", "critical", "urgent", ""]), json_values),
    "timestamp": st.one_of(times, json_scalars),
    "properties": st.one_of(json_values, deep, st.dictionaries(st.text(max_size=3), json_values)),
    "context": json_values,
    "traits": json_values,
    "metadata": st.one_of(json_values, deep),
    "unexpected": json_values,
}
events = st.fixed_dictionaries({}, optional=field_values)


def reference(raw: dict[str, Any]) -> tuple[dict[str, Any], list[list[Any]]] | None:
    """What marshmallow loads, split by :func:`phi.split` (None: it refuses)."""
    try:
        event = event_schema.load(raw)
    except marshmallow.ValidationError:
        return None
    clear, pairs = phi.split(event, POLICY)
    return {**clear, "userId": event["userId"], "anonymousId": event["anonymousId"]}, pairs


def fast(raw: dict[str, Any]) -> tuple[dict[str, Any], list[list[Any]]] | None:
    before = copy.deepcopy(raw)
    got = load_split(raw, POLICY)
    assert raw == before  # the input is never modified
    return got


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_fast_validator_agrees_with_marshmallow(raw: dict[str, Any]) -> None:
    assert fast(raw) == reference(raw)


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {"type": st.just("click"), "userId": st.text(min_size=1, max_size=20)},
        optional={k: v for k, v in field_values.items() if k not in ("unexpected", "type", "userId")},
    )
)
def test_agreement_on_mostly_valid_events(raw: dict[str, Any]) -> None:
    assert fast(raw) == reference(raw)


finite_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4)
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=16,
)
objects = st.dictionaries(names, finite_values, max_size=5)


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {"type": st.just("click"), "userId": st.text(min_size=1, max_size=20)},
        optional={
            "anonymousId": st.text(min_size=1, max_size=5),
            "properties": objects,
            "context": objects,
            "traits": objects,
            "metadata": objects,
        },
    )
)
def test_agreement_on_valid_events_full_of_phi(raw: dict[str, Any]) -> None:
    expected = reference(raw)
    assert expected is not None
    assert fast(raw) == expected


def test_it_accepts_a_typical_event() -> None:
    raw = {
        "type": "page_view",
        "userId": "u-17",
        "properties": {"path": "/", "email": "a@b.c"},
        "context": {"app": {"Phone": "555"}, "locale": "en-US", "page": {"search": "?q=1"}, "timezone": "1980-04-12"},
        "metadata": {"category": "Cardiology"},
        "traits": {"plan": "pro", "contact": {"phone": "555"}},
        "timestamp": "2026-11-28T10:00:00.123Z",
    }
    loaded = load_split(raw, POLICY)
    assert loaded is not None and loaded == reference(raw)
    event, pairs = loaded
    # Declared (path, locale) stays; a PHI name, an undeclared field, an
    # identifier-shaped value (the date) and undeclared objects are sealed.
    assert event["properties"] == {"path": "/"} and event["context"] == {"app": {}, "locale": "en-US"}
    assert event["metadata"] == {} and event["traits"] == {"plan": "pro", "contact": {}}
    assert pairs == [
        [["userId"], "u-17"],
        [["properties", "email"], "a@b.c"],
        [["traits", "contact", "phone"], "555"],
        [["context", "app", "Phone"], "555"],
        [["context", "page"], {"search": "?q=1"}],
        [["context", "timezone"], "1980-04-12"],
        [["metadata", "category"], "Cardiology"],
    ]


def test_unusual_shapes_are_left_to_the_schema_of_record() -> None:
    """A dict subclass or a non-JSON value is not refused: declined (None),
    so marshmallow loads it and phi.split walks it."""

    class Attributes(dict):
        pass

    for properties in ({"who": Attributes(email="a@b.c")}, {"when": datetime.now(UTC)}):
        raw = {"type": "click", "userId": "u", "properties": properties}
        assert load_split(raw, POLICY) is None
        assert reference(raw) is not None


def test_a_list_or_object_where_a_string_goes_is_declined() -> None:
    """Not a TypeError from a set lookup (``[] in frozenset()``)."""
    for field in ("type", "userId", "priority", "messageId"):
        for value in ([], {}, ["low"]):
            raw = {"type": "click", "userId": "u", field: value}
            assert load_split(raw, POLICY) is None and reference(raw) is None


class Narrower(EventSchema):
    """The event with three rules changed: a type of 2 to 5 characters, other
    priorities ("low" when missing), and only an anonymous id identifies."""

    identified_by = ("anonymousId",)
    type = fields.String(required=True, validate=validate.Length(min=2, max=5))
    priority = fields.String(load_default="low", allow_none=True, validate=validate.OneOf(["low", "top"]))


def test_a_rule_changed_in_the_schema_changes_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    narrower = Narrower()
    strings, _, defaults = read_schema(narrower)
    monkeypatch.setattr(fastpath, "_STRINGS", strings)
    monkeypatch.setattr(fastpath, "_DEFAULTS", defaults)
    base = {"type": "click", "anonymousId": "a"}
    changes: list[tuple[dict[str, Any], bool]] = [
        ({}, True),
        ({"type": "c"}, False),
        ({"type": "clicks"}, False),
        ({"priority": "top"}, True),
        ({"priority": "high"}, False),
        ({"priority": None}, True),
        ({"anonymousId": None, "userId": "u"}, False),
    ]
    for change, valid in changes:
        raw = {**base, **change}
        got = load_split(raw, POLICY)
        if valid:
            assert got is not None and got[0] == narrower.load(raw), change
        else:
            assert got is None, change
            with pytest.raises(marshmallow.ValidationError):
                narrower.load(raw)
    assert load_split(base, POLICY) == (narrower.load(base), [[["anonymousId"], "a"]])
    assert narrower.load(base)["priority"] == "low"


def test_a_rule_the_fast_path_cannot_check_stops_the_import() -> None:
    class Patterned(EventSchema):
        type = fields.String(required=True, validate=validate.Regexp("^[a-z_]+$"))

    class MoreObjects(EventSchema):
        extra = FreeObject()  # a free object that phi.split would not search

    class Renamed(EventSchema):
        type = fields.String(required=True, data_key="kind")

    class TwoTimes(EventSchema):
        received = Timestamp(load_default=None, allow_none=True)

    for schema in (Patterned(), MoreObjects(), Renamed(), TwoTimes()):
        with pytest.raises(TypeError):
            read_schema(schema)
