from __future__ import annotations

import pytest

from analytics import phi
from analytics.crypto import DecryptionError, Vault, generate_key
from analytics.records import RecordCodec
from analytics.settings import DEFAULT_PHI_FIELDS, Settings

POLICY = phi.PhiPolicy(DEFAULT_PHI_FIELDS.split(","))


def test_split_finds_phi_at_any_depth_case_insensitively() -> None:
    event = {"type": "x", "userId": "u-1", "properties": {
        "plan": "pro", "EMAIL": "a@b.c", "visits": [{"Phone": "555"}, {"ok": 1}],
        "deep": {"deeper": {"ssn": "123-45-6789"}}}}
    clear, pairs = phi.split(event, POLICY)
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
    event = {"type": "login", "userId": "patient-42", "anonymousId": None, "messageId": "m-1",
             "properties": {"email": "jane@example.org", "plan": "pro"}, "context": None,
             "traits": None, "metadata": None, "priority": None, "timestamp": None}
    record = codec.encode(event, "normal", 1_000_000, None)
    assert "patient-42" not in str(record) and "jane@example.org" not in str(record)
    assert record["u"] == codec.user_hash("patient-42")
    shown = codec.decode(record, reveal_phi=True)
    assert shown["userId"] == "patient-42" and shown["properties"]["email"] == "jane@example.org"
    hidden = codec.decode(record, reveal_phi=False)
    assert hidden["userId"] == phi.REDACTED and hidden["properties"]["plan"] == "pro"


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
    from analytics.errors import ConfigurationError

    settings = Settings.from_env({"ANALYTICS_RETENTION_DAYS": "7", "REDIS_URL": "redis://h:1/2"})
    assert settings.retention_days == 7 and settings.broker_url == "redis://h:1/2"
    with pytest.raises(ConfigurationError):
        Settings.from_env({"ANALYTICS_RETENTION_DAYS": "soon"})
    with pytest.raises(ConfigurationError, match="ANALYTICS_ENCRYPTION_KEYS"):
        Vault.from_settings(Settings.from_env({}))


def test_keyed_hashes_are_plain_hmac_sha256() -> None:
    import base64
    import hmac

    vault = Vault([generate_key()])
    key = vault._hash_key
    assert vault.pseudonym("u-1") == hmac.digest(key, b"user\x00u-1", "sha256").hex()[:32]
    expected = base64.urlsafe_b64encode(hmac.digest(key, b"message\x00m-1", "sha256")[:12]).decode()
    assert vault.event_id("m-1") == expected
