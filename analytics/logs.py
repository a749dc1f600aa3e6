"""One logging filter that keeps PHI out of every log line.

Every process (web, worker, beat, CLI) calls :func:`configure_logging` at
start. It installs :class:`PhiScrubbingFilter` at the one place every log
record passes through whatever handler later prints it: the log record
factory. Handlers that Celery or gunicorn add after us therefore still see
scrubbed records (a filter on a logger would miss records propagated from
child loggers; a filter on today's handlers would miss tomorrow's).

The filter formats the message (``msg % args``) and the traceback, then
replaces what looks like PHI:

* e-mail addresses, US social security numbers, phone numbers written with
  separators (``+1 555-010-7731``, ``(555) 010-7731``): the patterns of
  :mod:`analytics.privacy.screening`, which screens clear values with them;
* the value of any PHI field name (the configured ``ANALYTICS_PHI_FIELDS``
  plus ``userId``/``anonymousId``) in ``key=value``, ``key: value`` and
  JSON-ish ``"key": "value"`` text, whatever the value looks like;
* API keys (``ak_...``), bearer tokens and passwords in URLs.

It is deliberately greedy: a redacted harmless value costs nothing, a leaked
identifier cannot be taken back.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable

from analytics.privacy.phi import IDENTITY_FIELDS
from analytics.privacy.screening import EMAIL as _EMAIL
from analytics.privacy.screening import PHONE as _PHONE
from analytics.privacy.screening import SSN as _SSN
from analytics.settings import DEFAULT_PHI_FIELDS

REDACTED = "[redacted]"

_API_KEY = re.compile(r"\bak_[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_URL_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^/\s@]+@")
#: Names whose values are always secret or identifying, beyond the PHI list.
_EXTRA_NAMES = (
    "user_id",
    "anonymous_id",
    "previousId",
    "writeKey",
    "token",
    "password",
    "secret",
    "authorization",
    "phone_number",
    "social_security_number",
)


def _name_pattern(names: Iterable[str]) -> re.Pattern[str]:
    alternatives = "|".join(sorted({re.escape(n) for n in names if n}, key=len, reverse=True))
    # A name, optionally quoted, then = or :, then a quoted string, or a
    # bare token running to the next separator.
    return re.compile(
        r"(?i)(?<![\w])([\"']?(?:" + alternatives + r")[\"']?\s*[:=]\s*)"
        r"(\[redacted\]|\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s,;&}\]\)]+)"
    )


class PhiScrubbingFilter(logging.Filter):
    """Rewrites a record's message and traceback with PHI redacted.

    Never drops a record. Idempotent: scrubbing twice changes nothing.
    """

    def __init__(self, phi_fields: Iterable[str] = ()) -> None:
        super().__init__()
        names = set(DEFAULT_PHI_FIELDS.split(",")) | set(phi_fields)
        names |= set(IDENTITY_FIELDS) | set(_EXTRA_NAMES)
        self._names = _name_pattern(names)

    def scrub(self, text: str) -> str:
        """``text`` with every PHI-looking value replaced by ``[redacted]``."""
        if not text:
            return text
        text = self._names.sub(lambda m: m.group(1) + REDACTED, text)
        text = _URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)
        text = _API_KEY.sub(REDACTED, text)
        text = _BEARER.sub(lambda m: m.group(1) + " " + REDACTED, text)
        text = _EMAIL.sub(REDACTED, text)
        text = _SSN.sub(REDACTED, text)
        return _PHONE.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_phi_scrubbed", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not leak its args
            message = f"{record.msg} [unformattable arguments dropped]"
        record.msg = self.scrub(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        record._phi_scrubbed = True
        return True


_lock = threading.Lock()
_installed: PhiScrubbingFilter | None = None


def scrubbing_filter() -> PhiScrubbingFilter:
    """The installed filter (installing the default one if needed)."""
    return _installed or install()


def install(phi_fields: Iterable[str] = ()) -> PhiScrubbingFilter:
    """Make every log record of this process pass through the filter."""
    global _installed
    with _lock:
        new = PhiScrubbingFilter(phi_fields)
        if _installed is None:
            previous = logging.getLogRecordFactory()

            def factory(*args: object, **kwargs: object) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                assert _installed is not None
                _installed.filter(record)
                return record

            logging.setLogRecordFactory(factory)
        _installed = new
        return new


def add_to_handlers(logger: logging.Logger | None = None) -> None:
    """Also attach the filter to ``logger``'s handlers (default: root).

    Records are scrubbed at creation already; this covers records a library
    builds by hand (``logging.makeLogRecord``) and hands to a handler.
    """
    flt = scrubbing_filter()
    for handler in (logger or logging.getLogger()).handlers:
        if flt not in handler.filters:
            handler.addFilter(flt)


def configure_logging(phi_fields: Iterable[str] = (), level: int = logging.INFO) -> None:
    """Install the scrubbing filter; give the root logger a stderr handler
    if nobody configured one (gunicorn and Celery bring their own)."""
    install(phi_fields)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level)
    add_to_handlers(root)
