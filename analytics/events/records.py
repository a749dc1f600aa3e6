"""The stored form of an event (a *record*) and its conversions.

A record is what goes on the queue and into the store: the event with its PHI
taken out and sealed (:mod:`analytics.privacy.phi`), user ids replaced by keyed
hashes, times as integer milliseconds. In Python a record is a dict with
short keys:

====  ===============================  ====  ==============================
key   meaning                          key   meaning
====  ===============================  ====  ==============================
i     event id (keyed hash of the      u     keyed hash of userId, or ""
      messageId)                       a     keyed hash of anonymousId, or ""
m     a generated messageId, else i
t     type                             pr    properties without PHI
p     priority                         cx    context without PHI
ts    timestamp (ms, skew-corrected)   tr    traits without PHI
rt    receivedAt (ms)                  md    metadata without PHI
ot    original timestamp (ms), when    sa    batch sentAt (ms), when given
      corrected                        s     sealed PHI pairs, when any
====  ===============================  ====  ==============================

Stored and queued, a record is a *blob*: a msgpack array in a fixed order,
because every byte is paid per stored event (about 40 % smaller than the
JSON dict):

``[i, m, p, ts, rt - ts, u, a, pr, cx, tr, md, s, ot, sa]``

trailing absent fields left out, absent ones ``nil``; ``t`` is not in it
(the page holding the blob belongs to one type). Binary where it is shorter:
the 96-bit event id and the 128-bit user hashes as raw bytes (not base64 or
hex), the sealed PHI as the raw AEAD blob (not base64), a generated
(UUID) messageId as its 16 bytes (``nil`` for a client's messageId: the
client chose it, so it may carry anything; it is among the sealed pairs
and kept in clear only as its keyed hash, the event id), the priority as its index in
:data:`analytics.keyspace.PRIORITIES`. A value that does not have the
expected shape (a record built elsewhere) is kept as it is, so decoding
always gives back the record that was encoded. The sealed PHI pairs are
msgpack too, the top-level field of each path as a one-byte code (older
records sealed JSON; both open).

A *page* (:mod:`analytics.events.store`) is blobs one after another; a full page
is compressed (zlib, marked by a first byte ``0``, which no blob starts
with): records of one type and minute share most keys and values, so
their clear parts shrink to a fraction (sealed PHI and hashes do not).

The queue carries, per record, what the commit needs without decoding the
blob (:func:`queue_item`): ``[type, ts, owner, dedupe shard, dedupe
member, blob]``. The worker passes those through to the commit script.

A record's *owner* is the hash its index membership and erasure go by: its
user hash, or, when it has no userId (a visitor's events before logging
in), its anonymous hash; "" when it has neither. The commit script indexes
the record under ``analytics:events:user:{owner}`` and drops it if the owner
was erased meanwhile, so anonymous-only records can be found and erased
(:mod:`analytics.privacy.erasure`). Both hashes are the same keyed hash of the id
string, so a userId index may hold anonymous-only records whose
anonymousId is the same string: reads by userId filter on the user field
(:func:`blob_user`), never on the index alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import uuid
import zlib
from typing import Any

import msgpack
import msgspec

from analytics.keyspace import PRIORITIES
from analytics.privacy import phi

NESTED = (("properties", "pr"), ("context", "cx"), ("traits", "tr"), ("metadata", "md"))
PRIORITY_CODE = {p: n for n, p in enumerate(PRIORITIES)}
#: Top-level fields of PHI paths, sealed as their index (a path's first step
#: is always a field name, never a list index, so an int there is a code).
FIELD_NAMES = (*phi.IDENTITY_FIELDS, *phi.NESTED_FIELDS, phi.MESSAGE_ID)
FIELD_CODES = {name: n for n, name in enumerate(FIELD_NAMES)}

#: A queue item: type, ts, owner (user hash, else anonymous hash), dedupe
#: shard, dedupe member, blob.
QueueItem = list[Any]

#: Packs blobs and queue items. msgspec's encoder gives the very bytes
#: ``msgpack.packb`` gives for these types (str, bytes, int, float, bool,
#: None, list, dict), at a fraction of the cost per call: packb builds a
#: Packer each time (1.6 us against 0.2 us for a PHI pair list), and the
#: ingest path packs twice per event. Decoding stays with msgpack.
packb = msgspec.msgpack.encode

_STRINGS = ("i", "m", "t", "p")
_OPTIONAL_STRINGS = ("u", "a")
_TIMES = ("ts", "rt")


def record_problem(record: Any) -> str | None:
    """Why ``record`` cannot be stored (names a field, never a value), or None."""
    if not isinstance(record, dict):
        return "not an object"
    for key in _STRINGS:
        value = record.get(key)
        if not isinstance(value, str) or not value:
            return f"field {key!r} missing or not a non-empty string"
    for key in _OPTIONAL_STRINGS:
        if not isinstance(record.get(key, ""), str):
            return f"field {key!r} not a string"
    for key in _TIMES:
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"field {key!r} missing or not an integer"
    if record["p"] not in PRIORITIES:
        return "field 'p' not a priority"
    if "s" in record and not isinstance(record["s"], str):
        return "field 's' not a sealed string"
    return None


# -- binary forms that decode back to exactly the same string ------------------
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64_bytes(text: str) -> bytes | str:
    """URL-safe base64 text as its bytes, if it encodes back the same."""
    # binascii directly: base64.urlsafe_b64decode costs twice as much, and
    # this runs for every ingested event.
    try:
        encoded = text.encode("ascii")
        raw = binascii.a2b_base64(encoded.translate(_TO_STANDARD))
    except (UnicodeEncodeError, binascii.Error):
        return text
    return raw if binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE) == encoded else text


def _sealed_bytes(text: str) -> bytes | str:
    """A sealed token (URL-safe base64) as its bytes. No round-trip check
    (it is the hot path): strictly valid base64 decodes to the very bytes
    :meth:`Vault.open` would read from it, and the tokens we make are
    canonical, so they come back the same."""
    try:
        return binascii.a2b_base64(text.encode("ascii").translate(_TO_STANDARD), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        return text


def _hex_bytes(text: str) -> bytes | str | None:
    if not text:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return text
    return raw if raw.hex() == text else text


def _b64_text(value: bytes | str) -> str:
    return base64.urlsafe_b64encode(value).decode() if isinstance(value, bytes) else value


def _hex_text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.hex() if isinstance(value, bytes) else value


def message_bytes(message_id: str) -> bytes | str:
    """A generated messageId (a canonical UUID) as its 16 bytes."""
    if len(message_id) == 36:
        try:
            parsed = uuid.UUID(message_id)
        except ValueError:
            return message_id
        if str(parsed) == message_id:
            return parsed.bytes
    return message_id


# -- blobs ---------------------------------------------------------------------
def pack(record: dict[str, Any], event_id: bytes | str | None = None) -> bytes:
    """The stored blob of ``record`` (see the module docstring);
    ``event_id``: its id as :func:`_b64_bytes` gives it, when known."""
    ts = record["ts"]
    priority = record["p"]
    fields: list[Any] = [
        _b64_bytes(record["i"]) if event_id is None else event_id,
        None if record["m"] == record["i"] else message_bytes(record["m"]),
        PRIORITY_CODE.get(priority, priority),
        ts,
        record["rt"] - ts,
        _hex_bytes(record.get("u", "")),
        _hex_bytes(record.get("a", "")),
        record.get("pr"),
        record.get("cx"),
        record.get("tr"),
        record.get("md"),
        _sealed_bytes(record["s"]) if "s" in record else None,
    ]
    if "ot" in record:
        fields += (record["ot"], record["sa"])
    while fields[-1] is None:
        fields.pop()
    return packb(fields)


def unpack_fields(event_type: str, fields: list[Any]) -> dict[str, Any]:
    """The record of a decoded blob (``fields``) of type ``event_type``."""
    fields = fields + [None] * (14 - len(fields))
    i, m, p, ts, rt, u, a, pr, cx, tr, md, s, ot, sa = fields
    event_id = _b64_text(i)
    record: dict[str, Any] = {
        "i": event_id,
        # nil: the client's messageId, sealed; its keyed hash (the id) stands in.
        "m": str(uuid.UUID(bytes=m)) if isinstance(m, bytes) else (m or event_id),
        "t": event_type,
        "p": PRIORITIES[p] if isinstance(p, int) else p,
        "rt": ts + rt,
        "u": _hex_text(u),
        "a": _hex_text(a),
        "ts": ts,
    }
    if ot is not None:
        record["ot"], record["sa"] = ot, sa
    for short, value in (("pr", pr), ("cx", cx), ("tr", tr), ("md", md)):
        if value is not None:
            record[short] = value
    if s is not None:
        record["s"] = _b64_text(s)
    return record


def unpack(event_type: str, blob: bytes) -> dict[str, Any]:
    """The record stored as ``blob``."""
    return unpack_fields(event_type, msgpack.unpackb(blob))


#: First byte of a compressed page (a blob is an array: never starts so).
COMPRESSED = b"\x00"


def page_data(page: bytes) -> bytes:
    """The blobs of a page, one after another (decompressed if need be).

    A JSON record of the first layout (one record per field, ``{...}``) is
    no page: it holds no blobs (cleanup queues such records again,
    :mod:`analytics.ops.retention`)."""
    if page[:1] == COMPRESSED:
        return zlib.decompress(page[1:])
    return b"" if page[:1] == b"{" else page


def is_compressed(page: bytes) -> bool:
    return page[:1] == COMPRESSED


def compress_page(data: bytes) -> bytes:
    # Level 1: as small as level 9 on such pages (the sealed parts do not
    # compress at all), at a fraction of the CPU.
    return COMPRESSED + zlib.compress(data, 1)


def iter_blobs(page: bytes) -> msgpack.Unpacker:
    """The decoded blobs (field lists) of a page."""
    data = page_data(page)
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1024))
    unpacker.feed(data)
    return unpacker


def split_page(page: bytes) -> list[tuple[list[Any], bytes]]:
    """(fields, original bytes) of every blob of ``page``, in order."""
    data = page_data(page)
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1024))
    unpacker.feed(data)
    out: list[tuple[list[Any], bytes]] = []
    offset = 0
    for fields in unpacker:
        end = unpacker.tell()
        out.append((fields, data[offset:end]))
        offset = end
    return out


def blob_user(fields: list[Any]) -> str:
    """The user hash of a decoded blob ("" when none)."""
    return _hex_text(fields[5] if len(fields) > 5 else None)


def blob_anonymous(fields: list[Any]) -> str:
    """The anonymous hash of a decoded blob ("" when none)."""
    return _hex_text(fields[6] if len(fields) > 6 else None)


def blob_owner(fields: list[Any]) -> str:
    """The owner of a decoded blob (see the module docstring): its user
    hash, else its anonymous hash, else ""."""
    return blob_user(fields) or blob_anonymous(fields)


def record_owner(record: Any) -> str:
    """The owner of a record dict (see the module docstring); "" when it
    has none or is not a well-formed record."""
    if not isinstance(record, dict):
        return ""
    for key in ("u", "a"):
        value = record.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def blob_id(fields: list[Any]) -> str:
    return _b64_text(fields[0])


def dedupe_key(event_id: str) -> tuple[str, str]:
    """(shard, member) of an event id in the dedupe sets.

    The id is a 96-bit keyed hash (:meth:`Vault.event_id`); its first 16
    bits pick one of 65,536 shards and the next 64 bits, as a signed
    decimal, are the member, so Redis keeps each shard as an *intset* of
    8-byte integers. Two distinct messageIds collide only if all 80 bits
    agree: with a billion stored events the chance that any pair does is
    about 4e-7 (birthday bound n^2 / 2^81), so no distinct event is ever
    dropped in practice. A shard holds 512 members as an intset by default
    (``set-max-intset-entries``), i.e. 33 million events in all; beyond
    that it silently becomes a (larger) hash table, still exact.
    """
    return _dedupe_key(event_id, _b64_bytes(event_id))


def _dedupe_key(event_id: str, raw: bytes | str) -> tuple[str, str]:
    if not isinstance(raw, bytes) or len(raw) < 10:
        raw = hashlib.blake2b(event_id.encode(), digest_size=10).digest()
    return dedupe_member(raw)


#: The shard (2 bytes, skipped) and member (signed 64-bit) of an id.
_SHARD_MEMBER = struct.Struct(">Hq")


def dedupe_member(raw: bytes) -> tuple[str, str]:
    return raw[:2].hex(), str(_SHARD_MEMBER.unpack_from(raw)[1])


def queue_item(record: dict[str, Any]) -> QueueItem:
    """What the queue carries for ``record`` (see the module docstring)."""
    raw = _b64_bytes(record["i"])
    shard, member = _dedupe_key(record["i"], raw)
    return [record["t"], record["ts"], record_owner(record), shard, member, pack(record, raw)]


def item_record(item: QueueItem) -> dict[str, Any]:
    """The record of a queue item (only off the normal path: dead letters)."""
    return unpack(item[0], item[5])
