"""Property tests (hypothesis) of the boundary: the schemas, PHI splitting and
sealing hold for any input, not just the examples we thought of."""

from __future__ import annotations

from typing import Any

import marshmallow
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.events.schemas import (
    MAX_DEPTH,
    MAX_KEYS,
    audit_query_schema,
    erase_schema,
    event_query_schema,
    event_schema,
)
from analytics.privacy import phi
from analytics.privacy.crypto import DecryptionError, Vault
from analytics.settings import DEFAULT_PHI_FIELDS

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POLICY = phi.PhiPolicy(DEFAULT_PHI_FIELDS.split(","))
VAULT = Vault([Fernet.generate_key().decode()])

# Planted strings carry a marker, so that a value echoed in an error message
# is told apart from a value that merely happens to be a word of a fixed
# message (the input "type" inside "Invalid input type.").
planted = st.text(max_size=20).map(lambda s: "\u00a7" + s)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | planted
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
field_names = st.sampled_from(
    [
        "type",
        "userId",
        "anonymousId",
        "properties",
        "metadata",
        "context",
        "traits",
        "priority",
        "timestamp",
        "messageId",
        "email",
        "x",
    ]
)
events = st.dictionaries(field_names, json_values, max_size=8)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _messages(errors: Any) -> list[str]:
    """Every error message (the values of the error tree, not its keys)."""
    return _strings(errors)


@SETTINGS
@given(raw=events | json_values)
def test_event_schema_only_raises_validation_errors_and_never_echoes(raw: Any) -> None:
    try:
        event = event_schema.load(raw)
    except marshmallow.ValidationError as exc:
        inputs = [s for s in _strings(raw) if len(s) >= 4 and s.startswith("\u00a7")]
        for message in _messages(exc.normalized_messages()):
            assert not any(value in message for value in inputs), message
        return
    assert event["type"] and (event["userId"] or event["anonymousId"])


@SETTINGS
@given(
    query=st.dictionaries(
        st.sampled_from(["type", "start", "end", "userId", "priority", "limit", "cursor", "other"]),
        st.text(max_size=30),
        max_size=6,
    )
)
def test_query_schemas_only_raise_validation_errors(query: dict[str, str]) -> None:
    for schema in (event_query_schema, audit_query_schema, erase_schema):
        try:
            schema.load(query)
        except marshmallow.ValidationError:
            pass


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _size(value: Any) -> int:
    if isinstance(value, dict):
        return len(value) + sum(_size(v) for v in value.values())
    if isinstance(value, list):
        return len(value) + sum(_size(v) for v in value)
    return 0


deep = st.recursive(
    st.integers(),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=60,
)


@SETTINGS
@given(properties=st.dictionaries(st.text(max_size=5), deep, max_size=4))
def test_depth_and_key_limits_are_exact(properties: dict[str, Any]) -> None:
    ok = _depth(properties) <= MAX_DEPTH and _size(properties) <= MAX_KEYS
    try:
        event_schema.load({"type": "click", "anonymousId": "a", "properties": properties})
    except marshmallow.ValidationError as exc:
        assert not ok, exc.normalized_messages()
    else:
        assert ok


phi_names = st.sampled_from(["email", "Email", "PHONE", "ssn", "name", "dob", "ip", "url"])
clear_names = st.sampled_from(["path", "count", "plan", "step", "ok"])
nested = st.recursive(
    st.text(max_size=10) | st.integers(),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(phi_names | clear_names, c, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(
    event=st.fixed_dictionaries(
        {"type": st.just("click")},
        optional={
            "userId": st.text(min_size=1, max_size=10),
            "anonymousId": st.text(min_size=1, max_size=10),
            "properties": st.dictionaries(phi_names | clear_names, nested, max_size=4),
            "metadata": st.dictionaries(phi_names | clear_names, nested, max_size=4),
        },
    )
)
def test_split_removes_every_phi_value_and_merge_restores_it(event: dict[str, Any]) -> None:
    clear, pairs = phi.split(event, POLICY)

    def has_phi(node: Any) -> bool:
        if isinstance(node, dict):
            return any(POLICY.is_phi(k) or has_phi(v) for k, v in node.items())
        if isinstance(node, list):
            return any(has_phi(v) for v in node)
        return False

    assert "userId" not in clear and "anonymousId" not in clear
    assert not has_phi({k: v for k, v in clear.items() if k in phi.NESTED_FIELDS})
    sealed = VAULT.seal(repr(pairs).encode())
    assert VAULT.open(sealed) == repr(pairs).encode()
    assert phi.merge(clear, pairs) == event


@SETTINGS
@given(data=st.binary(max_size=200), flip=st.integers(min_value=0))
def test_sealed_values_are_authenticated(data: bytes, flip: int) -> None:
    token = VAULT.seal(data)
    assert VAULT.open(token) == data
    assert len(data) < 8 or data not in token.encode()
    blob = bytearray(token.encode())
    index = flip % len(blob)
    blob[index] = ord("A") if blob[index] != ord("A") else ord("B")
    try:
        opened = VAULT.open(blob.decode())
    except DecryptionError:
        return
    # base64 padding bits can change without changing the bytes
    assert opened == data
