"""API key records: PHI access and expiry (their parsing, the records
written before they existed, the command line's ``keys create`` and
``keys list``), against the session's Redis."""

from __future__ import annotations

import datetime
import time
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from analytics import keyspace
from analytics.errors import AuthenticationError, PermissionDenied, ValidationError
from analytics.privacy.apikeys import ApiKeyStore, KeyForbidden, parse_expiry, parse_record
from cli.main import main as cli

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * 86400), ("12h", 12 * 3600), ("90m", 5400), ("45s", 45), ("2w", 14 * 86400)]
)
def test_durations_count_from_now(text: str, seconds: int) -> None:
    assert parse_expiry(text, NOW) == NOW + seconds
    assert parse_expiry(text.upper(), NOW) == NOW + seconds


def test_iso_dates_are_utc_unless_an_offset_is_given() -> None:
    midnight = datetime.datetime(2027, 1, 31, tzinfo=datetime.UTC).timestamp()
    assert parse_expiry("2027-01-31", NOW) == midnight
    assert parse_expiry("2027-01-31T12:00:00", NOW) == midnight + 12 * 3600
    assert parse_expiry("2027-01-31T12:00:00+02:00", NOW) == midnight + 10 * 3600


@pytest.mark.parametrize("text", ["0d", "2020-01-01", "soon", "30", "-5d", "3y", ""])
def test_past_zero_and_unreadable_expiries_are_refused(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_expiry(text, NOW)
    assert list(caught.value.details) == ["expires"]


def test_a_record_without_the_new_fields_keeps_phi_access_and_never_expires() -> None:
    old = parse_record(orjson.dumps({"id": "k1", "role": "read", "name": "", "user_hash": "", "created": 1.0}))
    assert old.phi is True and old.reveal_phi is True
    assert old.expires == 0.0 and not old.expired(NOW * 10)


def test_only_read_keys_go_without_phi(data: Any) -> None:
    store = ApiKeyStore(data)
    _, key = store.create("read", phi=False)
    assert key.phi is False
    for role in ("ingest", "admin"):
        with pytest.raises(ValidationError):
            store.create(role, phi=False)


def test_the_store_refuses_an_expired_key_and_says_what_a_refusal_needed(data: Any) -> None:
    store = ApiKeyStore(data)
    secret, key = store.create("read", expires=time.time() - 1)
    assert key.expired()
    with pytest.raises(AuthenticationError):
        store.authenticate(secret)
    _, scoped = store.create("read", user_hash="ab" * 16)
    with pytest.raises(KeyForbidden) as caught:
        scoped.require("admin")
    assert isinstance(caught.value, PermissionDenied)
    assert (caught.value.required, caught.value.key_id) == ("admin", scoped.id)
    with pytest.raises(KeyForbidden) as caught:
        scoped.require_unscoped("read the figures")
    assert caught.value.required == "unscoped read"


def run_cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_cli_creates_keys_without_phi_and_with_an_expiry_and_lists_both(env: dict[str, str], data: Any) -> None:
    created = run_cli(env, "keys", "create", "--role", "read", "--no-phi", "--expires", "30d", "--name", "analyst")
    assert created.exit_code == 0, created.output
    assert "no PHI" in created.output and "expires" in created.output
    key_id = created.output.split("created key id ")[1].split()[0]
    record = orjson.loads(data.hget(keyspace.API_KEYS, data.hget(keyspace.API_KEY_IDS, key_id)))
    assert record["phi"] is False
    assert record["expires"] == pytest.approx(time.time() + 30 * 86400, abs=60)

    plain = run_cli(env, "keys", "create", "--role", "read", "--name", "clinician")
    assert plain.exit_code == 0 and "no PHI" not in plain.output and "expires" not in plain.output

    bad = run_cli(env, "keys", "create", "--role", "ingest", "--no-phi")
    assert bad.exit_code == 1 and "phi" in bad.output
    late = run_cli(env, "keys", "create", "--role", "read", "--expires", "2001-01-01")
    assert late.exit_code == 1 and "expires" in late.output

    listing = run_cli(env, "keys", "list")
    assert listing.exit_code == 0
    header, *rows = listing.output.splitlines()
    assert header.split() == ["ID", "ROLE", "SCOPED", "PHI", "CREATED", "EXPIRES", "REVOKED", "NAME"]
    analyst = next(row for row in rows if row.endswith("analyst"))
    clinician = next(row for row in rows if row.endswith("clinician"))
    assert analyst.split()[3] == "no" and clinician.split()[3] == "yes"
    expiry = datetime.datetime.fromtimestamp(record["expires"], datetime.UTC).strftime("%Y-%m-%d")
    assert expiry in analyst and analyst.split()[6] == expiry
