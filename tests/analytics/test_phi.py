from __future__ import annotations

import base64
import copy
import hashlib
import os
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.errors import ConfigurationError
from analytics.events.codec import RecordCodec
from analytics.privacy import phi
from analytics.privacy.crypto import DecryptionError, Vault, generate_key
from analytics.privacy.screening import screens
from analytics.settings import DEFAULT_PHI_FIELDS, Settings

POLICY = phi.PhiPolicy(DEFAULT_PHI_FIELDS.split(","))
#: A type that declares its whole ``properties`` clear: PHI names and
#: identifier-shaped values are sealed anyway.
DECLARED = phi.merge_trees(phi.BUILTIN_TREE, phi.clear_tree(["properties", "context.x", "traits.a"]))
OPEN_POLICY = phi.PhiPolicy(DEFAULT_PHI_FIELDS.split(","), clear=lambda _type: DECLARED)


def test_everything_free_form_is_sealed_unless_declared() -> None:
    event = {
        "type": "x",
        "userId": "u-1",
        "properties": {"firstName": "Jane", "plan": "pro"},
        "traits": {"emailAddress": "jane@example.org"},
        "context": {
            "library": {"name": "analytics.js", "version": "4.1.0"},
            "locale": "en-US",
            "page": {"path": "/patients/42", "search": "?mrn=123", "referrer": "https://x.test/?q=1"},
            "device": {"id": "d-1", "advertisingId": "ad-1", "model": "Pixel 8"},
            "location": {"latitude": 52.1, "longitude": 4.3},
            "userAgent": "Mozilla/5.0",
        },
        "metadata": {"groupId": "g-1", "category": "Oncology", "channel": "server"},
    }
    clear, pairs = phi.split(event, POLICY)
    assert clear["properties"] == {} and clear["traits"] == {}
    assert clear["context"] == {
        "library": {"name": "analytics.js", "version": "4.1.0"},
        "locale": "en-US",
        "device": {"model": "Pixel 8"},
    }
    assert clear["metadata"] == {"channel": "server"}
    for value in ("Jane", "jane@example.org", "/patients/42", "d-1", "ad-1", "g-1", "Oncology", "Mozilla/5.0"):
        assert value not in repr(clear)
    assert phi.merge(copy.deepcopy(clear), pairs) == event


def test_names_are_matched_normalized() -> None:
    for name in ("firstName", "first-name", "FIRST_NAME", "e-mail", "emailAddress", "phoneNumber", "dateOfBirth"):
        assert POLICY.is_phi(name), name
    for name in ("zip_code", "patient_name", "full_name", "username", "birthday", "Date-Of-Birth"):
        assert POLICY.is_phi(name), name
    for name in ("ssn_last4", "patientEmail", "home-phone", "contact_zip_code", "IP_ADDRESS"):
        assert POLICY.is_phi(name), name  # a PHI word inside a longer name
    for name in ("plan", "amount", "hostname", "description", "recipients", "width"):
        assert not POLICY.is_phi(name), name


def test_declared_clear_values_are_screened_and_counted() -> None:
    screened: list[int] = []
    policy = phi.PhiPolicy(DEFAULT_PHI_FIELDS.split(","), clear=lambda _type: DECLARED, on_screened=screened.append)
    values = {
        "plan": "pro",
        "note": "call 555-201-0064",
        "born": "1980-04-12",
        "where": "12 Elm Street",
        "ip": "10.0.0.7",
        "mrn": 12345678,
        "tags": ["ok", "jane@example.org"],
    }
    clear, pairs = phi.split({"type": "x", "properties": values}, policy)
    assert clear["properties"] == {"plan": "pro", "tags": ["ok", None]}
    assert screened == [4]  # note, born, where, one tag (ip and mrn are PHI names): told once
    assert phi.merge(copy.deepcopy(clear), pairs)["properties"] == values
    assert policy.is_clear("x", ("properties", "plan")) and not policy.is_clear("x", ("properties", "email"))
    assert policy.is_clear("x", ("context", "library", "name")) and not policy.is_clear("x", ("context", "page"))


def test_split_finds_phi_at_any_depth_case_insensitively() -> None:
    event = {
        "type": "x",
        "userId": "u-1",
        "properties": {
            "plan": "pro",
            "EMAIL": "a@b.c",
            "visits": [{"Phone": "555"}, {"ok": 1}],
            "deep": {"deeper": {"ssn": "123-45-6789"}},
        },
    }
    clear, pairs = phi.split(event, OPEN_POLICY)
    assert "userId" not in clear
    assert clear["properties"] == {"plan": "pro", "visits": [{}, {"ok": 1}], "deep": {"deeper": {}}}
    assert sorted(v for _, v in pairs) == sorted(["u-1", "a@b.c", "555", "123-45-6789"])
    assert phi.merge(clear, pairs) == event


def test_seal_round_trip_and_rotation() -> None:
    old, new = generate_key(), generate_key()
    sealed = Vault([old]).seal(b"secret")
    rotated = Vault([new, old])
    assert rotated.open(sealed) == b"secret"
    assert rotated.key_id_of(rotated.seal(b"x")) != rotated.key_id_of(sealed)
    with pytest.raises(DecryptionError):
        Vault([new]).open(sealed)
    # The user-id hash survives the rotation (derived from the oldest key).
    assert Vault([old]).pseudonym("u-1") == rotated.pseudonym("u-1")


def test_tampered_token_is_refused() -> None:
    vault = Vault([generate_key()])
    token = vault.seal(b"secret")
    flipped = token[:-4] + ("A" if token[-4] != "A" else "B") + token[-3:]
    with pytest.raises(DecryptionError):
        vault.open(flipped)


def test_record_holds_no_clear_phi_and_decodes_for_allowed_readers() -> None:
    codec = RecordCodec(Vault([generate_key()]), POLICY, 86_400_000)
    event = {
        "type": "login",
        "userId": "patient-42",
        "anonymousId": None,
        "messageId": "m-1",
        "properties": {"email": "jane@example.org", "plan": "pro"},
        "context": None,
        "traits": None,
        "metadata": None,
        "priority": None,
        "timestamp": None,
    }
    record = codec.encode(event, "normal", 1_000_000, None)
    assert "patient-42" not in str(record) and "jane@example.org" not in str(record)
    assert record["u"] == codec.user_hash("patient-42")
    shown = codec.decode(record, reveal_phi=True)
    assert shown["userId"] == "patient-42" and shown["properties"]["email"] == "jane@example.org"
    assert shown["messageId"] == "m-1" and "m-1" not in str(record)
    hidden = codec.decode(record, reveal_phi=False)
    assert hidden["userId"] == phi.REDACTED and hidden["properties"] == {"email": phi.REDACTED, "plan": phi.REDACTED}
    assert hidden["messageId"] == record["i"]  # the client's messageId only to PHI readers
    declared = RecordCodec(codec.vault, OPEN_POLICY, 86_400_000)
    hidden = declared.decode(declared.encode(event, "normal", 1_000_000, None), reveal_phi=False)
    assert hidden["properties"] == {"email": phi.REDACTED, "plan": "pro"}


def test_clock_skew_correction_is_capped_and_keeps_raw_times() -> None:
    codec = RecordCodec(Vault([generate_key()]), POLICY, 60_000)
    base = {"type": "x", "userId": "u", "messageId": "m", "priority": None}
    # Client clock 10 s fast: sentAt and timestamp both 10 s ahead.
    record = codec.encode({**base, "timestamp": 110_000}, "normal", 100_000, 112_000)
    assert record["ts"] == 98_000 and record["ot"] == 110_000 and record["sa"] == 112_000
    # A skew beyond the cap is corrected by the cap only.
    record = codec.encode({**base, "timestamp": 10_000_000}, "normal", 100_000, 10_000_000)
    assert record["ts"] == 10_000_000 - 60_000


def test_settings_coerce_and_refuse_bad_values() -> None:

    settings = Settings.from_env({"ANALYTICS_RETENTION_DAYS": "7", "REDIS_URL": "redis://h:1/2"})
    assert settings.retention_days == 7 and settings.broker_url == "redis://h:1/2"
    with pytest.raises(ConfigurationError):
        Settings.from_env({"ANALYTICS_RETENTION_DAYS": "soon"})
    with pytest.raises(ConfigurationError, match="ANALYTICS_ENCRYPTION_KEYS"):
        Vault.from_settings(Settings.from_env({}))


def test_keyed_hashes_are_plain_keyed_blake2b() -> None:

    vault = Vault([generate_key()])
    key = vault._hash_key

    def mac(message: bytes) -> bytes:
        return hashlib.blake2b(message, key=key, digest_size=32).digest()

    assert vault.pseudonym("u-1") == mac(b"user\x00u-1").hex()[:32]
    assert vault.event_id("m-1") == base64.urlsafe_b64encode(mac(b"message\x00m-1")[:12]).decode()
    assert vault.pseudonym("u-1") != vault.pseudonym("u-2")


def _nonce(token: str) -> bytes:

    return base64.urlsafe_b64decode(token)[5:17]  # version, key id, nonce, ...


def test_nonces_are_never_repeated_across_threads_and_forks() -> None:

    vault = Vault([generate_key()])
    seen: list[bytes] = []

    def seal_many() -> None:
        seen.extend(_nonce(vault.seal(b"x")) for _ in range(2000))

    threads = [threading.Thread(target=seal_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's nonces must not continue the parent's buffer
        os.write(write, b"".join(_nonce(vault.seal(b"x")) for _ in range(100)))
        os._exit(0)
    seen.extend(_nonce(vault.seal(b"x")) for _ in range(100))  # the parent goes on too
    os.waitpid(pid, 0)
    child = os.read(read, 1200)
    seen.extend(child[i : i + 12] for i in range(0, len(child), 12))
    assert len(seen) == 8200
    assert len(set(seen)) == len(seen)


def _reference_split(event: dict[str, Any], names: frozenset[str]) -> tuple[dict[str, Any], list[list[Any]]]:
    """The plain definition :func:`phi.split` must agree with (under
    :data:`DECLARED`): an object with nothing declared goes whole; below a
    declared path, copy everything, dropping (and collecting) values under
    PHI names and scalars that look like identifiers."""
    found: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> Any:
        if isinstance(node, dict):
            clean = {}
            for key, value in node.items():
                if phi.normalize(key) in names:
                    found.append([[*path, key], value])
                else:
                    clean[key] = walk(value, [*path, key])
            return clean
        if isinstance(node, list):
            return [walk(item, [*path, i]) for i, item in enumerate(node)]
        if screens(node):
            found.append([path, node])
            return _SEALED
        return node

    def declared(field: str, value: dict[str, Any]) -> dict[str, Any]:
        if field == "properties":
            cleaned = walk(value, [field])
        else:
            allowed = {"context": "x", "traits": "a", "metadata": "channel"}[field]
            cleaned = {}
            for key, item in value.items():
                if key == allowed and phi.normalize(key) not in names:
                    cleaned[key] = walk(item, [field, key])
                else:
                    found.append([[field, key], item])
        return _drop_sealed(cleaned)

    clear = dict(event)
    for field in phi.IDENTITY_FIELDS:
        value = clear.pop(field, None)
        if value is not None:
            found.append([[field], value])
    for field in phi.NESTED_FIELDS:
        if clear.get(field):
            clear[field] = declared(field, clear[field])
    return clear, found


_SEALED = object()


def _drop_sealed(node: Any) -> Any:
    """Sealed scalars leave nothing in a dict and None in a list."""
    if isinstance(node, dict):
        return {k: _drop_sealed(v) for k, v in node.items() if v is not _SEALED}
    if isinstance(node, list):
        return [None if v is _SEALED else _drop_sealed(v) for v in node]
    return node


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.sampled_from(["a@b.co", "555-201-0064"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "Email", "email", "zip", "x", "SSN", "list"]), inner, max_size=4)
    ),
    max_leaves=20,
)


_objects = st.dictionaries(st.sampled_from(["a", "Email", "zip", "x", "list", "channel"]), _json, max_size=4)


@given(
    st.fixed_dictionaries(
        {"type": st.just("click")},
        optional={
            "userId": st.text(max_size=3),
            "anonymousId": st.none() | st.text(max_size=3),
            "properties": _objects,
            "context": _objects,
            "traits": _objects,
            "metadata": _objects,
        },
    )
)
@settings(max_examples=300, deadline=None)
def test_split_agrees_with_its_plain_definition(event: dict[str, Any]) -> None:
    policy = phi.PhiPolicy(DEFAULT_PHI_FIELDS.split(","), clear=lambda _type: DECLARED)
    before = copy.deepcopy(event)
    expected = _reference_split(event, policy.names)
    assert phi.split(event, policy) == expected  # names met for the first time
    assert phi.split(event, policy) == expected  # every verdict known: the leaf shortcut
    assert event == before  # the input is never modified


def test_phi_below_a_dict_subclass_is_found() -> None:
    class Attributes(dict):  # what a Python caller might pass; JSON never gives one
        pass

    policy = OPEN_POLICY
    for _ in range(2):  # cold, then with every name's verdict known
        event = {"type": "x", "properties": {"plan": "pro", "who": Attributes(email="a@b.c")}}
        clear, pairs = phi.split(event, policy)
        assert pairs == [[["properties", "who", "email"], "a@b.c"]]
        assert clear["properties"] == {"plan": "pro", "who": {}}
