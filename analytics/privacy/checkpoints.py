"""Audit checkpoints: the audit chain anchored outside the Redis it lives in.

The hash chain (:mod:`analytics.privacy.audit`) shows an edited or removed
entry, but not the newest entries removed with the chain head reset to
the new last mac, nor the whole log deleted: what is left is a consistent
chain. So, as AWS CloudTrail's digest files do for its logs, a signed
checkpoint is written now and then to a file outside Redis (one JSON line
each)::

    {"v": 1, "count": 1234, "head": "<mac of entry #1234>", "last": "<its stream id>",
     "ts": 1765142400.0, "prev": "<sig of the previous checkpoint>", "sig": "<HMAC>"}

``sig`` is HMAC-SHA256 over the other fields under the audit key
(``ANALYTICS_AUDIT_KEY``, a key of its own: whoever holds the data keys or
Redis cannot sign a checkpoint with it), and ``prev`` links each checkpoint
to the one before, so one cannot be edited, dropped from the middle or
forged. ``analytics audit verify`` then requires the log in Redis to extend
the last checkpoint: at least ``count`` entries, entry ``count`` having
mac ``head``.

The file is opened ``O_APPEND`` and created ``0600``; a writer holds an
exclusive ``flock`` on it while it reads the last checkpoint and adds the
next, so two writers (the beat's task, an ``audit verify``) never fork the
checkpoint chain. Put it where Redis's operators cannot write, or on an
append-only store (``chattr +a``, a WORM volume, a log shipper).

With ``ANALYTICS_AUDIT_SYSLOG`` (``/dev/log``, or ``host:port`` over UDP)
every checkpoint is also sent to syslog (stdlib ``SysLogHandler``,
facility ``auth``, tag ``analytics-audit-checkpoint``): a copy off the host
that whoever can write the file cannot take back. ``analytics audit verify
--checkpoints EXPORT`` checks the log against such a copy; lines may carry
a syslog prefix, the record is read from the first ``{``.

What it cannot show: entries removed after the last checkpoint (up to one
interval, ``ANALYTICS_CHECKPOINT_SECONDS``), or the newest lines of
the file removed by someone who can write it (unless checked against the
syslog copy).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import hmac
import logging
import logging.handlers
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import orjson

from analytics.errors import ConfigurationError
from analytics.privacy.crypto import Vault, decode_audit_key
from analytics.settings import Settings

log = logging.getLogger(__name__)

VERSION = 1
#: Bytes read from the end of the file for its last checkpoint (one line is
#: some 250 bytes).
_TAIL = 8192


class CheckpointError(Exception):
    """The checkpoint file does not verify: a forged, edited or dropped
    checkpoint. ``reason`` says which, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Checkpoint:
    count: int
    head: str
    last: str
    ts: float
    prev: str
    sig: str = ""

    def body(self) -> bytes:
        fields = {**asdict(self), "v": VERSION}
        del fields["sig"]
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)

    def when(self) -> str:
        moment = datetime.datetime.fromtimestamp(self.ts, datetime.UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


class CheckpointFile:
    """The signed checkpoints, appended to a JSON-lines file."""

    def __init__(self, path: str, key: bytes, syslog: str = "", weak_key: str = "") -> None:
        self.path = path
        self._key = key
        self._syslog = syslog
        #: Said once, when a checkpoint is first signed or checked (not by
        #: every command that merely builds the services).
        self._weak_key = weak_key

    def copy_at(self, path: str) -> CheckpointFile:
        """The same checkpoints' copy at ``path`` (a syslog export), to read."""
        return CheckpointFile(path, self._key)

    @classmethod
    def from_settings(cls, settings: Settings, vault: Vault) -> CheckpointFile | None:
        """The file ``ANALYTICS_AUDIT_CHECKPOINTS`` names (None when unset),
        signing with ``ANALYTICS_AUDIT_KEY`` or, said once, a key derived
        from the hash key."""
        if not settings.audit_checkpoints:
            return None
        if settings.audit_key:
            return cls(settings.audit_checkpoints, decode_audit_key(settings.audit_key), settings.audit_syslog)
        weak = (
            "ANALYTICS_AUDIT_KEY is not set: audit checkpoints are signed with a key derived "
            "from the hash key, so whoever holds that key could forge them; set ANALYTICS_AUDIT_KEY"
            if settings.encryption_keys
            else "DEVELOPMENT MODE: audit checkpoints are signed with a well-known key and prove nothing"
        )
        return cls(settings.audit_checkpoints, vault.derived_checkpoint_key, settings.audit_syslog, weak)

    # -- signing -------------------------------------------------------------
    def _sign(self, body: bytes) -> str:
        if self._weak_key:
            _warn_once(self._weak_key)
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def make(self, count: int, head: str, last: str, ts: float, previous: Checkpoint | None) -> Checkpoint:
        unsigned = Checkpoint(count, head, last, round(ts, 3), previous.sig if previous else "")
        return Checkpoint(**{**asdict(unsigned), "sig": self._sign(unsigned.body())})

    def _parse(self, line: bytes, label: str) -> Checkpoint:
        try:
            fields = orjson.loads(line)
            checkpoint = Checkpoint(
                int(fields["count"]),
                str(fields["head"]),
                str(fields["last"]),
                float(fields["ts"]),
                str(fields["prev"]),
                str(fields["sig"]),
            )
            version = fields.get("v")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise CheckpointError(f"checkpoint {label} in {self.path} is not a checkpoint record") from None
        if version != VERSION or not hmac.compare_digest(checkpoint.sig, self._sign(checkpoint.body())):
            raise CheckpointError(
                f"checkpoint {label} ({checkpoint.when()}) in {self.path} has a bad signature: forged or edited "
                "(or ANALYTICS_AUDIT_KEY changed)"
            )
        return checkpoint

    # -- reading -------------------------------------------------------------
    def read(self) -> list[Checkpoint]:
        """Every checkpoint, oldest first, each signature and link checked."""
        try:
            with open(self.path, "rb") as f:
                # From the first "{" to the last "}": a syslog export's lines
                # carry a prefix (and perhaps a NUL).
                lines = [_record(line) for line in f.read().split(b"\n") if line.strip()]
        except FileNotFoundError:
            return []
        out: list[Checkpoint] = []
        for n, line in enumerate(lines, 1):
            checkpoint = self._parse(line, f"#{n}")
            previous = out[-1] if out else None
            if checkpoint.prev != (previous.sig if previous else ""):
                raise CheckpointError(
                    f"checkpoint #{n} ({checkpoint.when()}) in {self.path} does not follow the one before it: "
                    "checkpoints were removed or inserted"
                )
            if previous and checkpoint.count < previous.count:
                raise CheckpointError(f"checkpoint #{n} ({checkpoint.when()}) counts fewer entries than the one before")
            out.append(checkpoint)
        return out

    def _last(self, fd: int) -> Checkpoint | None:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        start = max(0, size - _TAIL)
        tail = os.pread(fd, size - start, start)
        lines = [line for line in tail.split(b"\n") if line.strip()]
        if not lines:
            return None
        return self._parse(lines[-1], "(the last)")

    # -- writing -------------------------------------------------------------
    def append(self, build: Callable[[Checkpoint | None], Checkpoint | None]) -> Checkpoint | None:
        """Under the file's lock: ``build(last checkpoint)`` returns the next
        one (or None: nothing to add), which is appended. Returns it."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            checkpoint = build(self._last(fd))
            if checkpoint is not None:
                record = orjson.loads(checkpoint.body())
                record["sig"] = checkpoint.sig
                # One write of one line: with O_APPEND it lands whole at the end.
                line = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
                os.write(fd, line + b"\n")
                os.fsync(fd)
                self._mirror(line)
            return checkpoint
        finally:
            os.close(fd)  # releases the lock

    def _mirror(self, line: bytes) -> None:
        # A handler per checkpoint (one a minute): no socket stays open
        # between them, and a restarted syslog daemon is found again.
        try:
            handler = syslog_handler(self._syslog)
        except ConfigurationError as exc:
            log.error("audit checkpoint not sent to syslog: %s", exc.message)
            return
        if handler is not None:
            try:
                handler.emit(logging.makeLogRecord({"msg": line.decode(), "levelno": logging.INFO}))
            finally:
                handler.close()


def _record(line: bytes) -> bytes:
    start, end = line.find(b"{"), line.rfind(b"}")
    return line[start : end + 1] if 0 <= start < end else line


def syslog_handler(address: str) -> logging.Handler | None:
    """The syslog copy of the checkpoints: ``/dev/log`` (a socket path) or
    ``host:port`` (UDP); None for ``""``."""
    if not address:
        return None
    target: str | tuple[str, int]
    if address.startswith("/"):
        target = address
    else:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(f"ANALYTICS_AUDIT_SYSLOG must be a socket path or host:port, got {address!r}")
        target = (host, int(port))
    try:
        # UDP to a host; a socket path: datagram, else stream (SysLogHandler tries both)
        handler = logging.handlers.SysLogHandler(target, logging.handlers.SysLogHandler.LOG_AUTH)
    except OSError as exc:
        raise ConfigurationError(f"ANALYTICS_AUDIT_SYSLOG {address!r} cannot be reached ({exc.strerror})") from None
    handler.ident = "analytics-audit-checkpoint: "
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler
