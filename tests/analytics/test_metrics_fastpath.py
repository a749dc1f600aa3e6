"""The fast metric-sample validator never accepts what the marshmallow schema
of record refuses, and loads exactly what the schema loads, under the rules
as they are declared."""

from __future__ import annotations

import re
from typing import Any

import marshmallow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.metrics import schemas
from analytics.metrics.fastpath import load_sample
from analytics.metrics.schemas import MetricSampleSchema

PHI = frozenset({"email", "ssn"})
schema = MetricSampleSchema(phi_fields=PHI)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
names = st.one_of(st.sampled_from(["api.latency", "queue", "tags", "events.x", "a b", "9x", "x" * 129]), scalars)
tag_keys = st.one_of(
    st.sampled_from(["route", "env", "Email", "SSN", "_k", "9k", "a:b", "k" * 65]), st.text(max_size=4)
)
tag_values = st.one_of(st.sampled_from(["/login", "prod", "a,b", "", "v" * 129, "x y"]), scalars)
tags = st.one_of(st.dictionaries(tag_keys, tag_values, max_size=18), scalars)
times = st.one_of(
    st.sampled_from(["2026-11-28T10:00:00Z", "yesterday", "1795860000", ""]),
    st.integers(-5, 10**12),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
)
samples = st.fixed_dictionaries(
    {},
    optional={
        "name": names,
        "value": st.one_of(scalars, st.floats(-1e19, 1e19)),
        "tags": tags,
        "timestamp": times,
        "unit": scalars,
    },
)


def reference(raw: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return schema.load(raw)
    except marshmallow.ValidationError:
        return None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples)
def test_fast_path_accepts_only_what_the_schema_accepts(raw: dict[str, Any]) -> None:
    fast = load_sample(raw, PHI)
    if fast is not None:
        assert fast == reference(raw)


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {"name": st.just("api.latency"), "value": st.one_of(st.integers(-(10**9), 10**9), st.floats(-1e12, 1e12))},
        optional={
            "tags": st.dictionaries(
                st.sampled_from(["route", "env", "host"]), st.sampled_from(["/login", "prod", "h-1"]), max_size=3
            ),
            "timestamp": st.sampled_from(["2026-11-28T10:00:00Z", 1795860000, 1795860000.5, None]),
        },
    )
)
def test_fast_path_takes_every_ordinary_sample(raw: dict[str, Any]) -> None:
    fast = load_sample(raw, PHI)
    assert fast is not None and fast == reference(raw)


def test_a_rule_changed_in_the_schema_module_changes_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schemas, "MAX_TAGS", 1)
    monkeypatch.setattr(schemas, "MAX_MAGNITUDE", 100.0)
    monkeypatch.setattr(schemas, "TAG_VALUE", re.compile(r"^[a-z]{1,3}$"))
    monkeypatch.setattr(schemas, "RESERVED_NAMES", frozenset({"api.latency"}))
    base = {"name": "api.errors", "value": 100, "tags": {"env": "dev"}}
    changes: list[tuple[dict[str, Any], bool]] = [
        ({}, True),
        ({"value": -100.5}, False),
        ({"tags": {"env": "dev", "host": "a"}}, False),
        ({"tags": {"env": "prod"}}, False),
        ({"name": "api.latency"}, False),
    ]
    for change, valid in changes:
        raw = {**base, **change}
        fast = load_sample(raw, PHI)
        assert fast == reference(raw), change
        assert (fast is not None) == valid, change
