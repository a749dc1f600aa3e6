"""``analytics export`` and ``analytics import``: bulk data in and out.

Registered on the ``analytics`` group in :mod:`cli.main`; the work is in
:mod:`analytics.events.transfer`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import click

from analytics.events import transfer
from cli.services import analytics

#: Events per page of an export and per batch of an import.
PAGE_SIZE = 500


def _stderr() -> Any:
    # Looked up at call time: click's test runner swaps sys.stderr.
    return sys.stderr


@contextlib.contextmanager
def private_file(path: str) -> Iterator[IO[str]]:
    """A text file at ``path`` that only its owner may read or write (0600:
    an export holds PHI, decrypted), written atomically: under a temporary
    name in the same directory (``mkstemp`` makes it 0600 whatever the
    umask), renamed over ``path`` once complete, removed on failure. A file
    already at ``path`` is replaced, its mode with it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".export-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            yield out
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _output(path: str) -> contextlib.AbstractContextManager[IO[str]]:
    if path == "-":
        return click.open_file(path, "w", encoding="utf-8")
    return private_file(path)


@click.command("export")
@click.option("--type", "event_type", default=None, help="Only events of this type.")
@click.option("--start", default=None, help="From this time (ISO 8601 or epoch seconds).")
@click.option("--end", default=None, help="Up to this time (ISO 8601 or epoch seconds).")
@click.option("--user", "user_id", default=None, help="Only this user's events (USER_ID as sent).")
@click.option(
    "--where",
    "conditions",
    multiple=True,
    metavar="PROPERTY=CONDITION",
    help="Property filter, repeatable: plan=pro, amount=gte:10, trial=exists:true "
    "(the syntax of GET /v1/events, without the 'properties.' prefix).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(transfer.FORMATS),
    default=None,
    help="ndjson (one JSON event a line) or csv; default from --output's extension, else ndjson.",
)
@click.option("--output", "-o", default="-", metavar="FILE", help="Write here instead of standard output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def export_events(
    event_type: str | None,
    start: str | None,
    end: str | None,
    user_id: str | None,
    conditions: tuple[str, ...],
    fmt: str | None,
    output: str,
    quiet: bool,
) -> None:
    """Export events, newest first, as NDJSON or CSV.

    Streams page by page (memory stays small whatever the size), with a
    progress bar on standard error. PHI is written decrypted: treat the
    file as PHI. Every export is recorded in the audit log.

    \b
    Examples:
      analytics export --type page_view --start 2026-11-01 -o views.ndjson
      analytics export --user u-17 --format csv > u-17.csv
      analytics export --where plan=pro --where amount=gte:10
    """
    query: dict[str, Any] = {"type": event_type, "start": start, "end": end, "userId": user_id}
    for condition in conditions:
        name, sep, value = condition.partition("=")
        if not sep or not name:
            raise click.BadParameter("write PROPERTY=CONDITION, as in plan=pro", param_hint="--where")
        query.setdefault(f"properties.{name}", []).append(value)
    fmt = transfer.format_for(output, fmt)
    app = analytics()
    # Validate the query before creating the output file.
    app.events.get_events({**{k: v for k, v in query.items() if v}, "limit": 1})
    total = transfer.estimate(app.events, query)
    count = 0
    with _output(output) as out:
        writer = transfer.writer_for(fmt, out)
        with click.progressbar(length=total, label="exporting", file=_stderr(), hidden=quiet) as bar:
            for event in transfer.iter_events(app.events, query, PAGE_SIZE):
                writer.write(event)
                count += 1
                bar.update(1)
    app.privacy.record(
        "events.export", "cli", count=count, format=fmt, filters=transfer.audit_filters(app.events, query)
    )
    if not quiet:
        where = "standard output" if output == "-" else output
        click.echo(f"exported {count} events to {where}", err=True)


@click.command("import")
@click.argument("source", type=click.Path(exists=True, allow_dash=True, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(transfer.FORMATS),
    default=None,
    help="ndjson or csv; default from the file's extension, else ndjson.",
)
@click.option(
    "--batch-size",
    default=PAGE_SIZE,
    show_default=True,
    type=click.IntRange(1, 2500),
    help="Events queued per round trip.",
)
@click.option(
    "--max-queue",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="Backpressure: wait while the queue holds more entries than this "
    "(an entry is one batch or request, as in the queue length of stats).",
)
@click.option(
    "--max-wait",
    default=300.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Give up (exit 1) after waiting this many seconds in a row.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def import_events(source: str, fmt: str | None, batch_size: int, max_queue: int, max_wait: float, quiet: bool) -> None:
    """Import events from SOURCE (a file, or - for standard input).

    NDJSON: one event a line, the shape of POST /v1/events. CSV: a header
    line, then one event a row; columns as an export writes them (type,
    userId, anonymousId, properties as JSON, ...). An export can be imported
    again: events keep their messageId, and an event already stored is not
    stored twice.

    Events go through the normal pipeline (a worker and beat must run).
    Invalid lines are reported by line number, never by value; the rest is
    imported. Exit status: 0 when every line was imported, 1 when some were
    rejected (or the queue stayed full), 2 on bad usage.

    \b
    Examples:
      analytics import events.ndjson
      analytics export --type click | analytics import -
    """
    fmt = transfer.format_for(source, fmt)
    events = analytics(wake_workers=True).events
    err = _stderr()
    with click.open_file(source, "rb") as stream:
        size = _size(stream)
        with click.progressbar(length=size or 0, label="importing", file=err, hidden=quiet or not size) as bar:
            lines = transfer.counting_lines(stream, bar.update)
            report = transfer.import_events(
                events,
                transfer.reader_for(fmt, lines),
                batch_size=batch_size,
                max_queue=max_queue,
                max_wait=max_wait,
                on_wait=lambda n: (
                    None
                    if quiet
                    else click.echo(f"\nwaiting: {n} queue entries (more than --max-queue {max_queue})", err=True)
                ),
            )
    for number, errors in report.rejected[:20]:
        click.echo(f"line {number}: {transfer.describe_errors(errors)}", err=True)
    if len(report.rejected) > 20:
        click.echo(f"... and {len(report.rejected) - 20} more rejected lines", err=True)
    click.echo(f"imported {report.accepted} events, rejected {len(report.rejected)}")
    if report.rejected:
        sys.exit(1)


def _size(stream: Any) -> int:
    try:
        stream.seek(0, 2)
        size = stream.tell()
        stream.seek(0)
        return int(size)
    except (OSError, ValueError, AttributeError):
        return 0  # a pipe: no progress bar


__all__ = ["export_events", "import_events"]
