"""Bulk export and import of events (the ``analytics export`` and
``analytics import`` commands are thin faces over this module).

Export streams pages of :meth:`EventService.get_events` (a cursor per
page, so memory stays bounded whatever the size) and writes NDJSON or CSV;
PHI is decrypted, so every export is written to the audit log. Import reads
NDJSON or CSV in the same shapes (an export can be imported again: the
messageIds make it idempotent) and feeds :meth:`EventService.track_many`
in batches, waiting while the queue is longer than a threshold so that a big
file cannot flood Redis faster than the workers store it.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from analytics.errors import AnalyticsError, ValidationError
from analytics.events.filters import PREFIX as PROPERTY_PREFIX
from analytics.events.schemas import parse_time_ms
from analytics.events.service import EventService

FORMATS = ("ndjson", "csv")
#: CSV columns, in order; objects are JSON in their cell.
COLUMNS = (
    "id",
    "messageId",
    "type",
    "priority",
    "timestamp",
    "receivedAt",
    "userId",
    "anonymousId",
    "properties",
    "context",
    "traits",
    "metadata",
    "originalTimestamp",
    "sentAt",
)
JSON_COLUMNS = frozenset({"properties", "context", "traits", "metadata"})
#: Fields an export adds that are not part of an event sent in: dropped on import.
OUTPUT_ONLY = frozenset({"id", "receivedAt", "originalTimestamp", "sentAt"})


class QueueFullError(AnalyticsError):
    """The queue stayed longer than the import threshold for too long."""

    code = "queue_full"
    status = 503


def format_for(path: str, requested: str | None) -> str:
    """The format asked for, else the one the file name says, else NDJSON."""
    if requested:
        return requested
    return "csv" if path.lower().endswith(".csv") else "ndjson"


# -- export ------------------------------------------------------------------
def iter_events(events: EventService, query: dict[str, Any], page_size: int = 500) -> Iterator[dict[str, Any]]:
    """Every event matching ``query``, newest first, one page in memory at a time."""
    params = {k: v for k, v in query.items() if v not in (None, "", [])}
    params["limit"] = page_size
    while True:
        page, cursor = events.get_events(params, reveal_phi=True)
        yield from page
        if not cursor:
            return
        params["cursor"] = cursor


def estimate(events: EventService, query: dict[str, Any]) -> int:
    """Stored events in the time range (of the user): an upper bound of what
    an export writes (exact without property filters), for the progress bar."""
    start = parse_time_ms(query["start"]) if query.get("start") else None
    end = parse_time_ms(query["end"]) if query.get("end") else None
    return events.count(query.get("type"), start=start, end=end, user_id=query.get("userId"))


class NdjsonWriter:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def write(self, event: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(event).decode())
        self.out.write("\n")


class CsvWriter:
    def __init__(self, out: IO[str]) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.writer.writerow(COLUMNS)

    def write(self, event: dict[str, Any]) -> None:
        row = []
        for column in COLUMNS:
            value = event.get(column)
            if column in JSON_COLUMNS:
                row.append(orjson.dumps(value).decode() if value else "")
            else:
                row.append("" if value is None else str(value))
        self.writer.writerow(row)


def writer_for(fmt: str, out: IO[str]) -> NdjsonWriter | CsvWriter:
    return CsvWriter(out) if fmt == "csv" else NdjsonWriter(out)


def audit_filters(events: EventService, query: dict[str, Any]) -> dict[str, Any]:
    """The filters of an export as the audit log keeps them: no clear user
    id (its keyed hash instead), property filters by name only."""
    kept: dict[str, Any] = {}
    for name, value in query.items():
        if value in (None, "", []):
            continue
        if name == "userId":
            kept["user"] = events.user_hash(value)
        elif name.startswith(PROPERTY_PREFIX):
            kept.setdefault("properties", []).append(name[len(PROPERTY_PREFIX) :])
        else:
            kept[name] = value
    return kept


# -- import ------------------------------------------------------------------
@dataclass
class ImportReport:
    accepted: int = 0
    #: (line number, field errors): never the values, they may be PHI.
    rejected: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    waited_seconds: float = 0.0


def _event_from(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: v for k, v in raw.items() if k not in OUTPUT_ONLY}
    return raw


def read_ndjson(lines: Iterable[str]) -> Iterator[tuple[int, Any, dict[str, Any] | None]]:
    """(line number, event, None) or (line number, None, errors) per line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, _event_from(orjson.loads(line)), None
        except orjson.JSONDecodeError:
            yield number, None, {"_schema": ["Not valid JSON."]}


def read_csv(lines: Iterable[str]) -> Iterator[tuple[int, Any, dict[str, Any] | None]]:
    """Rows of a CSV with a header line (the columns of an export, or any
    subset: ``type``, ``userId``, ``properties``... ; empty cells are absent)."""
    reader = csv.DictReader(lines)
    for row in reader:
        number = reader.line_num
        event: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for column, cell in row.items():
            if column is None or cell is None or cell == "":
                if column is None:
                    errors["_schema"] = ["More cells than columns."]
                continue
            if column in JSON_COLUMNS:
                try:
                    event[column] = orjson.loads(cell)
                except orjson.JSONDecodeError:
                    errors[column] = ["Not valid JSON."]
            else:
                event[column] = cell
        if errors:
            yield number, None, errors
        else:
            yield number, _event_from(event), None


def reader_for(fmt: str, lines: Iterable[str]) -> Iterator[tuple[int, Any, dict[str, Any] | None]]:
    if fmt not in FORMATS:
        raise ValidationError("unknown format", {"format": [f"one of {', '.join(FORMATS)}"]})
    return read_csv(lines) if fmt == "csv" else read_ndjson(lines)


def import_events(
    events: EventService,
    rows: Iterable[tuple[int, Any, dict[str, Any] | None]],
    *,
    batch_size: int = 500,
    max_queue: int = 20,
    max_wait: float = 300.0,
    on_wait: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ImportReport:
    """Queue the events of ``rows`` in batches of ``batch_size``.

    Before each batch, waits while the queue holds more than ``max_queue``
    entries (one per batch or request; backpressure), calling ``on_wait(length)`` once per wait; raises
    :class:`QueueFullError` after ``max_wait`` seconds of waiting in a row (the
    workers are not keeping up, or none runs). Duplicates (same messageId)
    are dropped by the workers.
    """
    report = ImportReport()
    batch: list[Any] = []
    numbers: list[int] = []

    def wait_for_room() -> None:
        started = time.monotonic()
        told = False
        while (length := events.backlog()) > max_queue:
            if not told and on_wait is not None:
                on_wait(length)
                told = True
            if time.monotonic() - started > max_wait:
                raise QueueFullError(
                    f"the queue stayed above {max_queue} entries for {max_wait:g} s: is a worker running?"
                )
            sleep(0.1)
        report.waited_seconds += time.monotonic() - started

    def flush() -> None:
        if not batch:
            return
        wait_for_room()
        result = events.track_many(batch)
        report.accepted += result.accepted
        for rejected in result.rejected:
            report.rejected.append((numbers[rejected["index"]], rejected["errors"]))
        batch.clear()
        numbers.clear()

    for number, event, errors in rows:
        if errors is not None:
            report.rejected.append((number, errors))
            continue
        batch.append(event)
        numbers.append(number)
        if len(batch) >= batch_size:
            flush()
    flush()
    return report


def describe_errors(errors: dict[str, Any]) -> str:
    """``field: message; field: message`` (messages name fields, not values)."""
    parts = []
    for name, messages in errors.items():
        if isinstance(messages, dict):
            parts.append(f"{name}: {describe_errors(messages)}")
        else:
            text = " ".join(str(m) for m in messages) if isinstance(messages, list) else str(messages)
            parts.append(f"{name}: {text}")
    return "; ".join(parts)


def counting_lines(stream: IO[bytes], on_bytes: Callable[[int], None]) -> Iterator[str]:
    """Decoded lines of a binary stream, reporting the bytes read (progress)."""
    for raw in stream:
        on_bytes(len(raw))
        # A byte that is not UTF-8 becomes U+FFFD rather than stopping the import.
        yield raw.decode("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8", errors="replace")


__all__ = [
    "COLUMNS",
    "FORMATS",
    "ImportReport",
    "QueueFullError",
    "audit_filters",
    "counting_lines",
    "describe_errors",
    "estimate",
    "format_for",
    "import_events",
    "iter_events",
    "reader_for",
    "writer_for",
]
