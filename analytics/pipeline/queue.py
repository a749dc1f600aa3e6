"""The durable event queue: Redis Streams with one consumer group.

Why streams: an entry read with XREADGROUP stays in the group's pending list
until a worker acknowledges it, so a worker killed mid-batch loses nothing;
another worker takes the entry over with XAUTOCLAIM once it has been idle
for ``claim_idle_seconds``. Acknowledgement happens inside the same Lua
script that stores the batch (:mod:`analytics.events.store`), which makes "stored"
and "acknowledged" one atomic step.

There is one stream (lane) per priority. Workers drain lanes highest first,
so under a backlog critical events overtake low ones. One stream entry holds
all records of one request with the same priority: fewer, larger entries
cost less than one entry per event.

An entry's field ``r`` is a msgpack array of queue items
(:func:`analytics.events.records.queue_item`): per record its type, timestamp,
owner hash, dedupe key and stored blob, so the worker hands them to the
commit script as they are, without decoding a record. (Entries of older
versions carry ``e``, a JSON array of record dicts; they are still read.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack
import orjson
import redis

from analytics import keyspace
from analytics.events.records import QueueItem, item_record, packb, queue_item, record_problem
from analytics.redis_client import StreamChunk


@dataclass
class Entry:
    """One queue entry: the records of one request and priority, as queue
    items (:func:`analytics.events.records.queue_item`)."""

    lane: str
    id: str
    items: list[QueueItem]
    deliveries: int = 1
    raw: bytes = field(default=b"", repr=False)
    #: Why the entry could not be read ("" when it could): such an entry has
    #: no records and is set aside whole, sealed, by the processing side.
    problem: str = ""
    #: Records of an older entry that fail :func:`record_problem`: set aside
    #: by the processing side, the others stored.
    invalid: list[Any] = field(default_factory=list, repr=False)
    #: False for a queue of JSON records (metric samples): ``items`` are
    #: then the records themselves.
    packed: bool = True

    @property
    def records(self) -> list[Any]:
        """The records, decoded (events: off the normal path only, such as
        tests and dead letters)."""
        return [item_record(item) for item in self.items] if self.packed else self.items


def _valid_item(item: Any) -> bool:
    return isinstance(item, list) and len(item) == 6 and isinstance(item[0], str) and isinstance(item[5], bytes)


class EventQueue:
    def __init__(
        self,
        client: redis.Redis,
        lanes: Iterable[str] = keyspace.EVENT_QUEUES,
        group: str = keyspace.GROUP,
        *,
        packed: bool = True,
    ) -> None:
        self._redis = client
        self.lanes = tuple(lanes)
        self.group = group
        #: Entries of queue items (events); False: a JSON array of records.
        self.packed = packed
        self._groups_ready = False

    def ensure_groups(self) -> None:
        """Create the consumer group on every lane (idempotent)."""
        for lane in self.lanes:
            try:
                self._redis.xgroup_create(lane, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    def fields(self, records: list[dict[str, Any]]) -> dict[Any, Any]:
        """The XADD fields of an entry holding ``records`` (the one place
        that packs an entry)."""
        if not self.packed:
            return {"e": orjson.dumps(records)}
        return self.item_fields([queue_item(record) for record in records])

    @staticmethod
    def item_fields(items: list[QueueItem]) -> dict[Any, Any]:
        """The XADD fields of an entry holding queue ``items``."""
        return {"r": packb(items)}

    def add(self, pipe: redis.client.Pipeline, lane: str, records: list[dict[str, Any]]) -> None:
        """Queue ``records`` as one entry (on ``pipe``, executed by the caller)."""
        pipe.xadd(lane, self.fields(records))

    def length(self) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for lane in self.lanes:
            pipe.xlen(lane)
        return sum(pipe.execute())

    def backlog(self, now_ms: int) -> tuple[float, int]:
        """How old the oldest queued entry is (seconds; 0 when none waits),
        and how many entries were ever added (every lane). Entries leave the
        stream once committed, so the first entry left is the oldest work
        not yet done: its age is the queue's lag."""
        pipe = self._redis.pipeline(transaction=False)
        for lane in self.lanes:
            pipe.xrange(lane, count=1)
            pipe.xinfo_stream(lane)
        replies = pipe.execute(raise_on_error=False)
        oldest, added = now_ms, 0
        for first, info in zip(replies[::2], replies[1::2], strict=True):
            if isinstance(first, list) and first:
                oldest = min(oldest, int(first[0][0].split(b"-")[0]))
            if isinstance(info, dict):
                added += int(info.get("entries-added", 0) or 0)
        return max(0.0, (now_ms - oldest) / 1000), added

    def lengths(self) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        for lane in self.lanes:
            pipe.xlen(lane)
        return dict(zip(self.lanes, pipe.execute(), strict=True))

    def _decode(self, lane: str, entry_id: bytes, fields: dict[bytes, bytes] | None, deliveries: int = 1) -> Entry:
        fields = fields or {}
        if not self.packed or (b"r" not in fields and b"e" in fields):
            return self._decode_json(lane, entry_id.decode(), fields.get(b"e", b"[]"), deliveries, self.packed)
        raw = fields.get(b"r", b"\x90")
        try:
            items = msgpack.unpackb(raw)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            items = None
        if not isinstance(items, list) or not all(_valid_item(item) for item in items):
            # One corrupt entry must not stop the read of the others.
            return Entry(lane, entry_id.decode(), [], deliveries, raw, problem="not a list of queue items")
        return Entry(lane, entry_id.decode(), items, deliveries, raw)

    @staticmethod
    def _decode_json(lane: str, entry_id: str, raw: bytes, deliveries: int, packed: bool) -> Entry:
        """A JSON array of records: metric samples, or events queued by an
        older version (turned into queue items)."""
        try:
            records = orjson.loads(raw)
        except orjson.JSONDecodeError:
            records = None
        if not isinstance(records, list):
            # One corrupt entry must not stop the read of the others.
            return Entry(lane, entry_id, [], deliveries, raw, problem="not a JSON list", packed=packed)
        if not packed:
            return Entry(lane, entry_id, records, deliveries, raw, packed=False)
        items: list[QueueItem] = []
        invalid: list[Any] = []
        for record in records:
            try:
                if record_problem(record) is None:
                    items.append(queue_item(record))
                    continue
            except (KeyError, TypeError, ValueError):
                pass
            invalid.append(record)
        return Entry(lane, entry_id, items, deliveries, raw, invalid=invalid)

    def read(self, consumer: str, count: int) -> list[Entry]:
        """Up to ``count`` new entries, from the highest-priority lanes first."""

        def take(lane: str, want: int) -> list[Entry]:
            reply = self._redis.xreadgroup(self.group, consumer, {lane: ">"}, count=want)
            return [
                self._decode(lane, eid, fields)
                for _, items in cast(list[tuple[bytes, StreamChunk]], reply or [])
                for eid, fields in items
            ]

        return self._from_each_lane(count, take)

    def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries whose worker has held them for ``min_idle_ms``."""

        def take(lane: str, want: int) -> list[Entry]:
            _, items, deleted = self._redis.xautoclaim(lane, self.group, consumer, min_idle_ms, "0-0", count=want)
            if deleted:
                # Entries deleted while pending: drop them from the pending list.
                self._redis.xack(lane, self.group, *deleted)
            if not items:
                return []
            counts = self._delivery_counts(lane, [eid for eid, _ in items])
            return [self._decode(lane, eid, fields, counts.get(eid, 1)) for eid, fields in items if fields is not None]

        return self._from_each_lane(count, take)

    def _from_each_lane(self, count: int, take: Callable[[str, int], list[Entry]]) -> list[Entry]:
        """Up to ``count`` entries from ``take(lane, at most)``, lane by lane
        in priority order. A lane whose group is missing (its stream was lost:
        a Redis without AOF) has the groups made again and gives nothing."""
        if not self._groups_ready:
            self.ensure_groups()
        entries: list[Entry] = []
        for lane in self.lanes:
            want = count - len(entries)
            if want <= 0:
                break
            try:
                entries.extend(take(lane, want))
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.ensure_groups()
        return entries

    def _delivery_counts(self, lane: str, ids: list[bytes]) -> dict[bytes, int]:
        pipe = self._redis.pipeline(transaction=False)
        for eid in ids:
            pipe.xpending_range(lane, self.group, min=eid, max=eid, count=1)
        counts: dict[bytes, int] = {}
        for eid, reply in zip(ids, pipe.execute(), strict=True):
            if reply:
                counts[eid] = int(reply[0]["times_delivered"])
        return counts

    def pending(self) -> int:
        """Entries delivered to a worker but not yet acknowledged."""
        if not self._groups_ready:
            self.ensure_groups()
        total = 0
        for lane in self.lanes:
            total += int(self._redis.xpending(lane, self.group)["pending"])
        return total
