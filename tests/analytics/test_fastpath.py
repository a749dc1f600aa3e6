"""The hot-path validator must agree with the marshmallow schema of record on
every input: same accept/reject decision, same loaded value."""
from __future__ import annotations

from typing import Any

import marshmallow
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.fastpath import load_event
from analytics.schemas import event_schema

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12)
deep = st.recursive(st.integers(), lambda inner: st.dictionaries(st.just("k"), inner,
                                                                  min_size=1, max_size=1),
                    max_leaves=12)
lengthy = st.integers(0, 300).map(lambda n: "x" * n)
times = st.one_of(st.just("2026-11-28T10:00:00.123Z"), st.just("2026-11-28T10:00:00+02:00"),
                  st.just("2026-11-28 10:00"), st.just("not a time"), st.just("1795860000"),
                  st.floats(allow_nan=True), st.integers(-5, 10**12), st.booleans())
field_values = {
    "type": st.one_of(st.sampled_from(["page_view", "", "x" * 64, "x" * 65]), json_scalars),
    "userId": st.one_of(lengthy, json_scalars),
    "anonymousId": st.one_of(lengthy, json_scalars),
    "messageId": st.one_of(lengthy, json_scalars),
    "priority": st.one_of(st.sampled_from(["low", "normal", "high", "critical", "urgent", ""]),
                          json_scalars),
    "timestamp": st.one_of(times, json_scalars),
    "properties": st.one_of(json_values, deep, st.dictionaries(st.text(max_size=3), json_values)),
    "context": json_values,
    "traits": json_values,
    "metadata": st.one_of(json_values, deep),
    "unexpected": json_values,
}
events = st.fixed_dictionaries({}, optional=field_values)


def reference(raw: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return event_schema.load(raw)
    except marshmallow.ValidationError:
        return None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_fast_validator_agrees_with_marshmallow(raw: dict[str, Any]) -> None:
    assert load_event(raw) == reference(raw)


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({"type": st.just("click"), "userId": st.text(min_size=1, max_size=20)},
                             optional={k: v for k, v in field_values.items()
                                       if k not in ("unexpected", "type", "userId")}))
def test_agreement_on_mostly_valid_events(raw: dict[str, Any]) -> None:
    assert load_event(raw) == reference(raw)


def test_it_accepts_a_typical_event() -> None:
    raw = {"type": "page_view", "userId": "u-17", "properties": {"path": "/"},
           "timestamp": "2026-11-28T10:00:00.123Z"}
    loaded = load_event(raw)
    assert loaded is not None and loaded == event_schema.load(raw)
