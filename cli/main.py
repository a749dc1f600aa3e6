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
import marshmallow
import orjson
import redis
from dotenv import load_dotenv

from analytics.errors import AnalyticsError, ValidationError
from analytics.events.schemas import event_type_schema
from analytics.events.transfer import describe_errors
from analytics.logs import configure_logging
from analytics.ops.statsview import render_table
from analytics.privacy.crypto import generate_key
from cli.anomaly import anomaly, forecast
from cli.devserver import run_dev
from cli.services import analytics
from cli.transfer import export_events, import_events


class _Group(click.Group):
    """Turns domain errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AnalyticsError as exc:
            click.echo(f"error: {exc.message}{_details(exc.details)}", err=True)
            sys.exit(1)
        except redis.RedisError as exc:
            click.echo(f"error: Redis at REDIS_URL failed ({type(exc).__name__}): is it running?", err=True)
            sys.exit(1)


def _details(details: dict[str, Any]) -> str:
    """Field-level details on the same line (they name fields, never values)."""
    text = describe_errors({k: v for k, v in details.items() if isinstance(v, (list, dict))})
    return f" ({text})" if text else ""


@click.group(cls=_Group)
def main() -> None:
    """Real-time analytics service: manage keys, data and the local stack.

    Settings come from the environment (and a .env file): REDIS_URL,
    ANALYTICS_ENCRYPTION_KEYS, ... (see docs/operations.rst).
    """
    load_dotenv(override=False)
    configure_logging()


@main.group()
def keys() -> None:
    """Create, list and revoke API keys (stored only as hashes)."""


@keys.command("create")
@click.option(
    "--role",
    type=click.Choice(["ingest", "read", "admin"]),
    required=True,
    help="ingest: write events and metrics; read: query and stream; admin: everything.",
)
@click.option(
    "--user", "user_id", default=None, help="Scope a read key to one user's data (USER_ID as sent in events)."
)
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option(
    "--no-phi",
    "no_phi",
    is_flag=True,
    help="A read key without PHI access: sealed values come back redacted (minimum necessary).",
)
@click.option(
    "--expires",
    default=None,
    metavar="DURATION|DATE",
    help="Refuse the key from then on: a duration (30d, 12h, 90m, 2w) or an ISO date/time (UTC unless given).",
)
def keys_create(role: str, user_id: str | None, name: str, no_phi: bool, expires: str | None) -> None:
    """Create a key. The key itself is printed once, alone on the last line."""
    secret, key = analytics().access.create(
        role, user_id=user_id, name=name, actor="cli", phi=not no_phi, expires=expires
    )
    notes = [f"role {key.role}"]
    if key.user_hash:
        notes.append("user-scoped")
    if not key.phi:
        notes.append("no PHI")
    if key.expires:
        notes.append(f"expires {_utc(key.expires)} UTC")
    click.echo(f"created key id {key.id} ({', '.join(notes)})")
    click.echo(secret)


def _utc(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


@keys.command("list")
def keys_list() -> None:
    """List keys: id, role, scope, PHI access, created, expires, revoked, name
    (times in UTC; an expiry in the past is marked ``(expired)``)."""
    rows = analytics().access.list()
    click.echo(f"{'ID':<14}{'ROLE':<8}{'SCOPED':<8}{'PHI':<5}{'CREATED':<22}{'EXPIRES':<32}{'REVOKED':<22}NAME")
    for k in rows:
        revoked = _utc(k.revoked) if k.revoked else "-"
        expires = (_utc(k.expires) + (" (expired)" if k.expired() else "")) if k.expires else "-"
        click.echo(
            f"{k.id:<14}{k.role:<8}{'yes' if k.user_hash else 'no':<8}{'yes' if k.phi else 'no':<5}"
            f"{_utc(k.created):<22}{expires:<32}{revoked:<22}{k.name}"
        )


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke the key with KEY_ID (from `keys list`); effective at once."""
    key = analytics().access.revoke(key_id, actor="cli")
    click.echo(f"revoked key id {key.id}")


@keys.command("generate-encryption-key")
def keys_generate_encryption_key() -> None:
    """Print a new key for ANALYTICS_ENCRYPTION_KEYS (put it first to rotate)."""
    click.echo(generate_key())


@keys.command("rotate-encryption")
@click.option(
    "--slice",
    "slice_size",
    default=200,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Values re-encrypted per step (bounded work per Redis call).",
)
def keys_rotate_encryption(slice_size: int) -> None:
    """Re-encrypt stored data under the newest key (first in
    ANALYTICS_ENCRYPTION_KEYS). Safe while the service runs; resumable: run it
    again after an interruption and it continues where it stopped. Keep the
    old keys configured until it has finished and the queue has drained."""
    app = analytics()
    privacy = app.privacy
    total = privacy.rotation_total()
    with click.progressbar(length=max(total, 1), label="re-encrypting", file=sys.stderr, show_pos=True) as bar:
        report = privacy.rotate_encryption(bar.update, slice_size=slice_size)
    click.echo(
        f"{'resumed; ' if report.resumed else ''}examined {report.examined}, "
        f"re-encrypted {report.rotated}, already current {report.current}, "
        f"changed meanwhile {report.raced}, unreadable {report.unreadable} "
        f"in {report.seconds:.1f} s"
    )
    if report.unreadable:
        click.echo("error: some values open with no configured key (see docs/security.rst: key rotation)", err=True)
        sys.exit(1)
    # Everything stored is sealed under the newest key now (bar queue
    # entries a worker holds): the older keys may leave
    # ANALYTICS_ENCRYPTION_KEYS, and processes start without them.
    if not report.pending:
        app.fingerprints.retire_all_but_newest()


@main.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("verify")
@click.option(
    "--checkpoints",
    "against",
    default="",
    metavar="FILE",
    help="Check against this copy of the checkpoints (an export of ANALYTICS_AUDIT_SYSLOG) instead.",
)
def audit_verify(against: str) -> None:
    """Check the HMAC chain of the audit log and that it extends the last
    signed checkpoint (ANALYTICS_AUDIT_CHECKPOINTS); exit 1 and say where it
    breaks. When intact, a new checkpoint is written."""
    app = analytics()
    if against and app.audit.checkpoints is None:
        click.echo("error: --checkpoints needs ANALYTICS_AUDIT_CHECKPOINTS (and its key) configured", err=True)
        sys.exit(1)
    result = app.audit.verify(against=against) if against else app.privacy.verify_audit()
    if result.ok:
        click.echo(f"audit log intact: {result.checked} entries verified; {result.anchor}")
        return
    if result.unanchored:
        # truncation, a wiped log, a forged checkpoint: not at one entry
        click.echo(f"audit log BROKEN: {result.reason}", err=True)
        sys.exit(1)
    where = (
        f"entry #{result.checked + 1} (id {result.broken_at})"
        if result.broken_at
        else f"after entry #{result.checked} (the end)"
    )
    click.echo(f"audit log BROKEN at {where}: {result.reason}; {result.checked} entries before it verified", err=True)
    sys.exit(1)


@audit.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--after", default=None, help="Entry id to continue after.")
def audit_list(limit: int, after: str | None) -> None:
    """Print audit entries (oldest first) as JSON lines."""
    entries, _ = analytics().privacy.audit_entries(after, limit)
    for entry in entries:
        click.echo(orjson.dumps(entry).decode())


@main.command()
@click.option("--user", "user_id", required=True, help="The USER_ID as sent in events.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase(user_id: str, yes: bool) -> None:
    """Remove every trace of a user: stored events, indexes, dead letters,
    queued events; revoke keys scoped to the user. Rollups stay (anonymous).
    Audited with the user's keyed hash, never the id."""
    if not yes:
        click.confirm("Erase every trace of this user? This cannot be undone", abort=True)
    report = analytics().privacy.erase_user(user_id, actor="cli")
    click.echo(
        f"erased {report.records} events and {report.deadLetters} dead letters, "
        f"revoked {len(report.keysRevoked)} keys (user hash {report.userHash})"
    )


@main.group("event-types")
def event_types() -> None:
    """Event types, and the fields that stay clear in their events."""


@event_types.command("list")
def event_types_list() -> None:
    """Every type: name, priority, the paths declared clear."""
    for event_type in analytics().events.event_types():
        click.echo(f"{event_type.name:<32}{event_type.priority:<10}{','.join(event_type.clear) or '-'}")


@event_types.command("register")
@click.argument("name")
@click.option("--priority", default="normal", show_default=True, help="low, normal, high or critical.")
@click.option("--description", default="")
@click.option(
    "--clear", "clear", multiple=True, help="A field path that stays clear, e.g. properties.plan (repeat the option)."
)
def event_types_register(name: str, priority: str, description: str, clear: tuple[str, ...]) -> None:
    """Register a type (or replace its settings); audited."""
    try:
        data = event_type_schema.load({"name": name, "priority": priority, "description": description})
    except marshmallow.ValidationError as exc:
        raise ValidationError("invalid event type", exc.normalized_messages()) from None
    event_type = analytics().events.register_event_type(
        data["name"], data["priority"], data["description"], clear, actor="cli"
    )
    click.echo(f"registered {event_type.name} ({event_type.priority}), clear: {', '.join(event_type.clear) or 'none'}")


@main.group()
def dlq() -> None:
    """Dead letters: what could not be processed, and replaying it."""


@dlq.command("list")
@click.option(
    "--kind",
    type=click.Choice(["events", "metrics", "segment"]),
    default="events",
    show_default=True,
    help="Which dead-letter store.",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--start", default="-", help="First id to show (from a previous listing).")
def dlq_list(kind: str, limit: int, start: str) -> None:
    """List dead letters, oldest first: id, reason, attempts, time, event or metric."""
    items = analytics().ops.dead_letter_list(kind, start, limit)
    click.echo(f"{'ID':<22}{'REASON':<18}{'ATTEMPTS':>8}  {'SET ASIDE (UTC)':<21}WHAT")
    for item in items:
        when = datetime.datetime.fromtimestamp(item["ts"], datetime.UTC)
        event, metric = item.get("event"), item.get("metric")
        what = (
            f"{event['type']} messageId={event['messageId']}"
            if event
            else f"metric {metric['name'] or '(invalid name)'}"
            if metric
            else "sealed message"
            if item["sealed"]
            else "-"
        )
        click.echo(f"{item['id']:<22}{item['reason']:<18}{item['attempts']:>8}  {when:%Y-%m-%d %H:%M:%S}  {what}")
    click.echo(f"{len(items)} dead letter(s) shown")


@dlq.command("replay")
@click.option(
    "--kind",
    type=click.Choice(["events", "metrics", "segment"]),
    default="events",
    show_default=True,
    help="Which dead-letter store.",
)
@click.option("--id", "ids", multiple=True, help="Replay this dead letter (repeatable).")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter of KIND.")
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=100_000,
    show_default=True,
    help="With --all, at most this many (oldest first).",
)
def dlq_replay(kind: str, ids: tuple[str, ...], replay_all: bool, limit: int) -> None:
    """Queue dead letters again (idempotent: an event already stored is not
    stored twice, a dead letter is queued once). Sealed messages and metric
    samples are validated again; still-invalid ones stay."""
    if not ids and not replay_all:
        raise click.UsageError("give --id ID (repeatable) or --all")
    report = analytics().ops.replay_dead_letters(kind, ids=list(ids) or None, limit=limit, actor="cli")
    click.echo(f"replayed {report.replayed}, still invalid {report.still_invalid}, already gone {report.already_gone}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON (as /v1/stats).")
def stats(as_json: bool) -> None:
    """Monitoring figures: queue, processing, workers, WebSocket, memory, cleanup."""
    figures = analytics().ops.stats_snapshot()
    if as_json:
        click.echo(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_table(figures))


@main.command()
@click.option("--port", default=None, type=int, help="Web port (default $PORT or 8000).")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
def run(port: int | None, no_flower: bool) -> None:
    """Run everything on this machine for development: Redis (started
    locally when REDIS_URL answers nowhere), web, worker, beat and Flower."""
    sys.exit(run_dev(port=port, flower=not no_flower))


# Bulk data commands live in their own module; they register on the group here.
main.add_command(export_events)
main.add_command(anomaly)
main.add_command(forecast)
main.add_command(import_events)


if __name__ == "__main__":  # pragma: no cover
    main()
