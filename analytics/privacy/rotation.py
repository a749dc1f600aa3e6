"""Key rotation: re-encrypt every stored sealed value under the newest key.

What is re-encrypted:

* stored records (``analytics:events:processed:*``), walked with ``HSCAN``
  in slices of ``slice_size`` pages; each page is rewritten with its
  records re-sealed, compare-and-set (a page a commit appended to since it
  was read is read again, up to a few times);
* dead letters (``analytics:dlq:*``), walked with ``XRANGE``. A stream entry
  cannot be changed in place, so a re-encrypted dead letter is appended
  again (same fields, the original ``ts``) and the old entry deleted, in
  one script: its stream id changes, nothing else;
* the queue streams (``analytics:events:queue*``), walked the same way and
  re-appended the same way, under one rule: only entries **no worker has
  been given yet** (newer than the consumer group's last-delivered id) are
  re-appended, and the check and the re-append are one script, so no worker
  can read an entry between them. An entry a worker holds (pending) is left
  as it is and counted in ``pending``: re-appending it would pull it from
  under that worker or store its records twice. It drains into the stored
  records within seconds, sealed under the old key; so keep the old key
  configured until a run reports ``pending`` 0 (run the command again once
  the queue has drained: a run only rewrites what is not current yet).

Safe while the service runs: each slice is written by a Lua script that
replaces a value only if it is still exactly the value that was read
(compare-and-set), so a record erased or rewritten meanwhile is left alone.

Resumable: after each slice the position (HSCAN cursor or last stream id)
is saved in ``analytics:rotation`` with the id of the target key; a new run
with the same newest key continues from there, a run for another key starts
over. ``HSCAN`` guarantees every field present for the whole walk is seen,
so stopping and resuming loses nothing.

User-id hashes and the audit chain do not depend on the encryption keys'
order (they use ``ANALYTICS_HASH_KEY`` or the oldest key), so they stay
valid across rotations.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import msgpack
import orjson
import redis

from analytics import keyspace
from analytics.events.records import packb
from analytics.events.store import EventStore
from analytics.lua_scripts import lua_source
from analytics.privacy.crypto import DecryptionError, Vault
from analytics.redis_client import StreamChunk

#: Attempts at rewriting a page that commits keep appending to.
PAGE_ATTEMPTS = 5

DONE = "done"

# redis-py's annotations cover its async client too; these are what the
# synchronous client (decode_responses off) returns.


@dataclass
class RotationReport:
    examined: int = 0
    rotated: int = 0
    current: int = 0
    #: values that no configured key opens (left as they are)
    unreadable: int = 0
    #: values changed by someone else between read and write (left alone;
    #: a new write is sealed under the newest key anyway)
    raced: int = 0
    #: queue entries a worker held (left to drain; see the module docstring)
    pending: int = 0
    resumed: bool = False
    seconds: float = 0.0


class Rotator:
    def __init__(self, client: redis.Redis, vault: Vault, slice_size: int = 200) -> None:
        self._redis = client
        self._vault = vault
        self.slice_size = slice_size
        self._cas_stream = client.register_script(lua_source("reappend_stream_entry.lua"))
        self._cas_queue = client.register_script(lua_source("reappend_queue_entry.lua"))
        self._store = EventStore(client)
        self.key_id = vault.current_key_id.hex()

    # -- what there is -------------------------------------------------------
    def targets(self) -> list[tuple[str, str]]:
        """(kind, key) of every place holding sealed values, in a fixed order."""
        hashes = sorted(
            k.decode() for k in self._redis.scan_iter(match=keyspace.EVENTS_PROCESSED + "*", count=200, _type="hash")
        )
        streams = sorted(
            k.decode() for k in self._redis.scan_iter(match=keyspace.DLQ_PREFIX + "*", count=200, _type="stream")
        )
        lanes = [lane for lane in keyspace.EVENT_QUEUES if self._redis.exists(lane)]
        return [("hash", k) for k in hashes] + [("stream", k) for k in streams] + [("queue", k) for k in lanes]

    def total(self) -> int:
        """Records and dead letters to examine (for a progress bar)."""
        pipe = self._redis.pipeline(transaction=False)
        for kind, key in self.targets():
            if kind != "hash":
                pipe.xlen(key)
        return self._store.stored_count() + sum(pipe.execute())

    def _state(self) -> dict[str, str]:
        raw = cast(dict[bytes, bytes], self._redis.hgetall(keyspace.ROTATION))
        state = {k.decode(): v.decode() for k, v in raw.items()}
        if state.get("key") != self.key_id:
            self._redis.delete(keyspace.ROTATION)
            self._redis.hset(keyspace.ROTATION, mapping={"key": self.key_id, "started": time.time()})
            return {}
        return state

    def _save(self, target: str, position: str) -> None:
        self._redis.hset(keyspace.ROTATION, target, position)

    # -- sealing -------------------------------------------------------------
    def _reseal(self, token: str, report: RotationReport) -> str | None:
        """``token`` under the newest key, or None when it already is (or
        cannot be opened)."""
        try:
            if self._vault.key_id_of(token) == self._vault.current_key_id:
                report.current += 1
                return None
            return self._vault.seal(self._vault.open(token))
        except (DecryptionError, ValueError):
            report.unreadable += 1
            return None

    def _reseal_record(self, raw: bytes, report: RotationReport) -> bytes | None:
        record = orjson.loads(raw)
        sealed = record.get("s") if isinstance(record, dict) else None
        if not sealed:
            report.current += 1
            return None
        new = self._reseal(sealed, report)
        if new is None:
            return None
        record["s"] = new
        return orjson.dumps(record)

    def _reseal_blob(self, fields: list[Any], blob: bytes, report: RotationReport) -> bytes:
        """A record's blob (decoded: ``fields``) with its seal under the
        newest key; ``blob`` itself when it already is (or has none)."""
        report.examined += 1
        sealed = fields[11] if len(fields) > 11 else None
        if not isinstance(sealed, bytes):
            report.current += 1
            return blob
        new = self._reseal(base64.urlsafe_b64encode(sealed).decode(), report)
        if new is None:
            return blob
        report.rotated += 1
        return packb([*fields[:11], base64.urlsafe_b64decode(new), *fields[12:]])

    def _reseal_entry(self, fields: dict[str, bytes], attempt: RotationReport) -> tuple[str, bytes, bytes] | None:
        """(field, old value, new value) of a queue entry with its records
        re-sealed; None when there is nothing to change."""
        if "r" in fields:  # queue items: [type, ts, owner, shard, member, blob]
            items = msgpack.unpackb(fields["r"])
            for item in items:
                item[5] = self._reseal_blob(msgpack.unpackb(item[5]), item[5], attempt)
            name, new = "r", packb(items)
        elif "e" in fields:  # records of an older version, JSON
            records = orjson.loads(fields["e"])
            for record in records:
                attempt.examined += 1
                sealed = record.get("s") if isinstance(record, dict) else None
                if not sealed:
                    attempt.current += 1
                    continue
                resealed = self._reseal(sealed, attempt)
                if resealed is None:  # current already, or unreadable (counted)
                    continue
                record["s"] = resealed
                attempt.rotated += 1
            name, new = "e", orjson.dumps(records)
        else:
            return None
        return (name, fields[name], new) if attempt.rotated else None

    # -- walking -------------------------------------------------------------
    def _rotate_page(self, event_type: str, page_id: str, page: bytes | None, report: RotationReport) -> int:
        """Re-seal the records of one page; returns the records examined."""
        for _ in range(PAGE_ATTEMPTS):
            if page is None:
                return 0
            attempt = RotationReport()

            def keep(fields: list[Any], blob: bytes, attempt: RotationReport = attempt) -> bytes:
                return self._reseal_blob(fields, blob, attempt)

            if self._store.rewrite(event_type, page_id, page, keep) >= 0:
                report.examined += attempt.examined
                report.rotated += attempt.rotated
                report.current += attempt.current
                report.unreadable += attempt.unreadable
                return attempt.examined
            page = self._store.page(event_type, page_id)
        report.raced += 1  # left as it is: the next run does it
        return 0

    def _rotate_hash(self, key: str, cursor: int, report: RotationReport, progress: Callable[[int], None]) -> None:
        event_type = key[len(keyspace.EVENTS_PROCESSED) :]
        while True:
            cursor, items = cast(tuple[int, dict[bytes, bytes]], self._redis.hscan(key, cursor, count=self.slice_size))
            examined = sum(self._rotate_page(event_type, name.decode(), page, report) for name, page in items.items())
            progress(examined)
            self._save(key, DONE if cursor == 0 else str(cursor))
            if cursor == 0:
                return

    def _walk(self, key: str, after: str, progress: Callable[[int], None]) -> Iterator[StreamChunk]:
        """The entries of stream ``key`` after ``after``, a slice at a time;
        the position is saved after each slice (resumable), and ``DONE`` at
        the end. Re-appended entries land at the end and are met again,
        already current: the walk ends because they are skipped."""
        start = f"({after}" if after else "-"
        while True:
            chunk = cast(StreamChunk, self._redis.xrange(key, start, "+", count=self.slice_size))
            yield chunk
            progress(len(chunk))
            if chunk:
                start = "(" + chunk[-1][0].decode()
                self._save(key, chunk[-1][0].decode())
            if len(chunk) < self.slice_size:
                self._save(key, DONE)
                return

    def _rotate_stream(self, key: str, after: str, report: RotationReport, progress: Callable[[int], None]) -> None:
        for chunk in self._walk(key, after, progress):
            for entry_id, fields in chunk:
                decoded = {k.decode(): v for k, v in fields.items()}
                if "sealed" in decoded:
                    name, old = "sealed", decoded["sealed"]
                    new_value = self._reseal(old.decode(), report)
                    new = new_value.encode() if new_value else None
                elif "record" in decoded:
                    name, old = "record", decoded["record"]
                    new = self._reseal_record(old, report)
                else:
                    report.current += 1
                    continue
                if new is None:
                    continue
                decoded[name] = new
                flat: list[Any] = []
                for k, v in decoded.items():
                    flat += (k, v)
                if self._cas_stream(keys=[key], args=[entry_id, name, old, *flat]):
                    report.rotated += 1
                else:
                    report.raced += 1
            report.examined += len(chunk)

    def _rotate_queue(self, key: str, after: str, report: RotationReport, progress: Callable[[int], None]) -> None:
        # As _rotate_stream; the script re-appends only undelivered entries.
        for chunk in self._walk(key, after, progress):
            for entry_id, raw in chunk:
                fields = {k.decode(): v for k, v in raw.items()}
                attempt = RotationReport()
                try:
                    change = self._reseal_entry(fields, attempt)
                except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                    change = None  # not a readable entry: the worker sets it aside
                    attempt.unreadable += 1
                report.examined += attempt.examined
                report.current += attempt.current
                report.unreadable += attempt.unreadable
                if change is None:
                    continue
                name, old, new = change
                flat: list[Any] = []
                for k, v in {**fields, name: new}.items():
                    flat += (k, v)
                done = self._cas_queue(keys=[key], args=[keyspace.GROUP, entry_id, name, old, *flat])
                if done == 1:
                    report.rotated += attempt.rotated
                elif done == -1:
                    report.pending += 1
                else:
                    report.raced += 1

    def run(self, progress: Callable[[int], None] = lambda n: None, stop_after: int | None = None) -> RotationReport:
        """Re-encrypt everything not yet under the newest key.

        ``stop_after`` stops after that many targets (tests of resuming).
        """
        started = time.monotonic()
        report = RotationReport()
        state = self._state()
        report.resumed = any(k not in ("key", "started") for k in state)
        for n, (kind, key) in enumerate(self.targets()):
            if stop_after is not None and n >= stop_after:
                report.seconds = time.monotonic() - started
                return report
            position = state.get(key, "")
            if position == DONE:
                continue
            if kind == "hash":
                self._rotate_hash(key, int(position or 0), report, progress)
            elif kind == "queue":
                self._rotate_queue(key, position, report, progress)
            else:
                self._rotate_stream(key, position, report, progress)
        self._redis.delete(keyspace.ROTATION)
        report.seconds = time.monotonic() - started
        return report
