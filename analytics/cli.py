"""The ``analytics`` command line.

Exit codes: 0 success, 1 a failure the message explains, 2 bad usage.
Secrets print alone on the last line of standard output, so scripts can take
them with ``tail -n 1``.
"""
from __future__ import annotations

import datetime
import sys
from typing import Any

import click
import redis

from analytics.errors import AnalyticsError


def _service():  # type: ignore[no-untyped-def]
    from analytics import AnalyticsService

    return AnalyticsService.create()


def _load_dotenv() -> None:
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover - python-dotenv is a dependency
        return
    load_dotenv(override=False)


class _Group(click.Group):
    """Turns domain errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except AnalyticsError as exc:
            click.echo(f"error: {exc.message}{_details(exc.details)}", err=True)
            sys.exit(1)
        except redis.RedisError as exc:
            click.echo(f"error: Redis at REDIS_URL failed ({type(exc).__name__}): is it running?",
                       err=True)
            sys.exit(1)


def _details(details: dict[str, Any]) -> str:
    """Field-level details on the same line (they name fields, never values)."""
    from analytics.transfer import describe_errors

    text = describe_errors({k: v for k, v in details.items() if isinstance(v, (list, dict))})
    return f" ({text})" if text else ""


@click.group(cls=_Group)
def main() -> None:
    """Real-time analytics service: manage keys, data and the local stack.

    Settings come from the environment (and a .env file): REDIS_URL,
    ANALYTICS_ENCRYPTION_KEYS, ... (see README.rst).
    """
    _load_dotenv()


@main.group()
def keys() -> None:
    """Create, list and revoke API keys (stored only as hashes)."""


@keys.command("create")
@click.option("--role", type=click.Choice(["ingest", "read", "admin"]), required=True,
              help="ingest: write events and metrics; read: query and stream; admin: everything.")
@click.option("--user", "user_id", default=None,
              help="Scope a read key to one user's data (USER_ID as sent in events).")
@click.option("--name", default="", help="A label to recognise the key by.")
def keys_create(role: str, user_id: str | None, name: str) -> None:
    """Create a key. The key itself is printed once, alone on the last line."""
    secret, key = _service().create_api_key(role, user_id=user_id, name=name)
    click.echo(f"created key id {key.id} (role {key.role}{', user-scoped' if key.user_hash else ''})")
    click.echo(secret)


@keys.command("list")
def keys_list() -> None:
    """List keys: id, role, scope, name, created, revoked."""
    rows = _service().api_keys.list()
    click.echo(f"{'ID':<14}{'ROLE':<8}{'SCOPED':<8}{'CREATED':<22}{'REVOKED':<22}NAME")
    for k in rows:
        created = datetime.datetime.fromtimestamp(k.created, datetime.timezone.utc)
        revoked = (datetime.datetime.fromtimestamp(k.revoked, datetime.timezone.utc)
                   .strftime("%Y-%m-%d %H:%M:%S") if k.revoked else "-")
        click.echo(f"{k.id:<14}{k.role:<8}{'yes' if k.user_hash else 'no':<8}"
                   f"{created:%Y-%m-%d %H:%M:%S}   {revoked:<22}{k.name}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke the key with KEY_ID (from `keys list`); effective at once."""
    key = _service().api_keys.revoke(key_id)
    click.echo(f"revoked key id {key.id}")


@keys.command("generate-encryption-key")
def keys_generate_encryption_key() -> None:
    """Print a new key for ANALYTICS_ENCRYPTION_KEYS (put it first to rotate)."""
    from analytics.crypto import generate_key

    click.echo(generate_key())


@main.command()
@click.option("--port", default=None, type=int, help="Web port (default $PORT or 8000).")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
def run(port: int | None, no_flower: bool) -> None:
    """Run everything on this machine for development: Redis (started
    locally when REDIS_URL answers nowhere), web, worker, beat and Flower."""
    from analytics.devserver import run_dev

    sys.exit(run_dev(port=port, flower=not no_flower))


# Bulk data commands live in their own module; they register on the group here.
from analytics.cli_transfer import export_events, import_events  # noqa: E402

main.add_command(export_events)
main.add_command(import_events)


if __name__ == "__main__":  # pragma: no cover
    main()
