"""The property filter syntax (no Redis needed)."""

from __future__ import annotations

import pytest

from analytics.errors import ValidationError
from analytics.events.filters import matcher, parse_filters
from analytics.privacy.phi import BUILTIN_TREE, PhiPolicy, clear_tree, merge_trees
from analytics.settings import DEFAULT_PHI_FIELDS

#: Every property of PROPS declared clear (for any type), and one PHI name.
DECLARED = merge_trees(
    BUILTIN_TREE,
    clear_tree(
        f"properties.{k}"
        for k in ("plan", "amount", "count", "trial", "code", "nested", "none", "label", "contact", "email", "missing")
    ),
)
POLICY = PhiPolicy(DEFAULT_PHI_FIELDS.split(","), clear=lambda _type: DECLARED)
PROPS = {
    "plan": "pro",
    "amount": 12.5,
    "count": 10,
    "trial": False,
    "code": "gt:1",
    "nested": {"tier": "gold"},
    "none": None,
    "label": "10",
}


def matches(**query: object) -> bool:
    where = matcher(parse_filters({f"properties.{k}": v for k, v in query.items()}, POLICY))
    assert where is not None
    return where(PROPS)


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"plan": "pro"}, True),
        ({"plan": "free"}, False),
        ({"plan": "eq:pro"}, True),
        ({"plan": "ne:pro"}, False),
        ({"plan": "ne:free"}, True),
        ({"missing": "ne:x"}, True),
        ({"amount": "gt:12"}, True),
        ({"amount": "gt:12.5"}, False),
        ({"amount": "gte:12.5"}, True),
        ({"amount": "lt:13"}, True),
        ({"amount": "lte:12"}, False),
        ({"plan": "gt:1"}, False),
        ({"count": "10"}, True),
        ({"count": "10.0"}, True),
        ({"label": "10"}, True),
        ({"trial": "false"}, True),
        ({"trial": "exists:true"}, True),
        ({"trial": "gte:0"}, False),
        ({"missing": "exists:false"}, True),
        ({"missing": "exists:true"}, False),
        ({"missing": "x"}, False),
        ({"nested.tier": "gold"}, True),
        ({"nested.tier.x": "gold"}, False),
        ({"none": "null"}, True),
        ({"code": "eq:gt:1"}, True),
        ({"nested": "gold"}, False),
        ({"amount": ["gte:10", "lt:13"]}, True),
        ({"amount": ["gte:10", "lt:12"]}, False),
    ],
)
def test_conditions(query: dict, expected: bool) -> None:
    assert matches(**query) is expected


@pytest.mark.parametrize(
    "parameter, value, fragment",
    [
        ("properties.amount", "gt:ten", "needs a number"),
        ("properties.amount", "lte:nan", "needs a number"),
        ("properties.trial", "exists:maybe", "exists:true"),
        ("properties.", "x", "properties.NAME"),
        ("properties.a..b", "x", "properties.NAME"),
        ("properties.email", "x", "PHI"),
        ("properties.contact.Phone", "exists:true", "PHI"),
        ("properties.undeclared", "x", "Not a clear field"),
    ],
)
def test_invalid_filters_name_the_parameter_not_the_value(parameter: str, value: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_filters({parameter: value}, POLICY)
    [message] = info.value.details[parameter]
    assert fragment in message and value not in str(info.value.details)


def test_no_filters_no_matcher_and_other_parameters_ignored() -> None:
    assert matcher(parse_filters({"type": "click", "limit": "5"}, POLICY)) is None


def test_a_field_clear_for_one_type_filters_only_that_type() -> None:
    policy = PhiPolicy(
        DEFAULT_PHI_FIELDS.split(","),
        clear=lambda event_type: clear_tree(["properties.plan"]) if event_type in ("click", None) else BUILTIN_TREE,
    )
    assert parse_filters({"type": "click", "properties.plan": "pro"}, policy)
    assert parse_filters({"properties.plan": "pro"}, policy)  # clear for some type
    with pytest.raises(ValidationError) as info:
        parse_filters({"type": "login", "properties.plan": "pro"}, policy)
    assert "properties.plan" in info.value.details
