"""The identifier screen: does a value look like it identifies a person?

One set of patterns, shared by the log scrubber (:mod:`analytics.logs`) and
by everything that lets a value stay in clear: values of declared-clear
fields (:mod:`analytics.privacy.phi`), event type names, metric names and
tag values. What it catches:

* e-mail addresses;
* phone numbers written with separators or an international prefix
  (``555-201-0064``, ``(555) 201-0064``, ``+15552010064``);
* US social security numbers (``123-45-6789``);
* full dates (``1980-04-12``, ``04/12/1980``, ``12.04.1980``,
  ``April 12, 1980``, ``12 Apr 1980``): a date of birth cannot be told
  from any other date, and HIPAA counts every date element but the year;
* street addresses (a house number, a name and a street word:
  ``12 Elm Street``, ``400 N Main Ave``) and post office boxes;
* IP addresses (v4, and v6 in its usual written forms);
* URLs with a query string (``...?patient=...``) or with a user part
  (``https://user@host``);
* runs of 7 or more digits (record, account, phone or SSN numbers written
  without separators), and integers of 7 or more digits.

What it cannot catch: a name (``Jane Doe``), a city, free text that
describes a person, an identifier in a shape of its own (``MRN-AB12C``).
That is why values are sealed unless declared clear: the screen is a
second line behind the declaration, not the first.
"""

from __future__ import annotations

import re
from typing import Any, cast

import redis

from analytics import keyspace
from analytics.redis_client import TRANSIENT_ERRORS

EMAIL = re.compile(r"[\w.+%-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
SSN = re.compile(r"(?<!\d)\d{3}[- ]\d{2}[- ]\d{4}(?!\d)")
PHONE = re.compile(
    r"(?<![\w-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3,4}[\s.-]\d{4}(?![\w-])"
    r"|(?<![\w-])\+\d{1,3}[\s.-]?\d{3,14}(?![\w-])"
    r"|(?<![\w-])\+\d{1,3}(?:[\s.-]\d{2,5}){2,5}(?![\w-])"
)
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
DATE = re.compile(
    r"(?<![\d.])(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}|\d{1,2}/\d{1,2}/\d{2})(?![\d/.-]*\d)"
    r"|\b" + _MONTH + r"\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}\b"
    r"|\b\d{1,2}(?:st|nd|rd|th)?\s+" + _MONTH + r",?\s+\d{4}\b",
    re.IGNORECASE,
)
STREET = re.compile(
    r"\b\d{1,6}[a-z]?\s+(?:[a-z0-9.'-]+\s+){0,4}"
    r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|terrace|"
    r"circle|cir|highway|hwy|parkway|pkwy|square|sq|trail|trl)\b"
    r"|\bp\.?\s?o\.?\s+box\s+\d+",
    re.IGNORECASE,
)
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)")
_HEX = r"[0-9a-f]{1,4}"
IPV6 = re.compile(
    r"(?<![\w:])(?:(?:" + _HEX + r":){7}" + _HEX + r"|(?:" + _HEX + r":){1,6}:(?:" + _HEX + r"(?::" + _HEX + r"){0,5})?"
    r"|::" + _HEX + r"(?::" + _HEX + r"){0,6})(?![\w:])",
    re.IGNORECASE,
)
URL_QUERY = re.compile(r"\?[^\s#]*=|[a-z][a-z0-9+.-]*://[^\s/?#@]+@", re.IGNORECASE)
DIGITS = re.compile(r"\d{7,}")

#: Every pattern above, in the order a match is most likely.
PATTERNS = (EMAIL, PHONE, SSN, DATE, DIGITS, IPV4, STREET, URL_QUERY, IPV6)
#: What each pattern needs: a value without any of these characters
#: matches none of them (one cheap search first, for the common case).
_TRIGGER = re.compile(r"[\d@?:]")
#: Integers from here on are screened as digit runs.
LONG_INTEGER = 10**6


#: All of them in one pattern: one search per value instead of one per
#: pattern (each search costs about as much as the value's whole check).
_ANY = re.compile("|".join(f"(?i:{p.pattern})" if p.flags & re.IGNORECASE else f"(?:{p.pattern})" for p in PATTERNS))
#: Values seen not to look identifying (clear values repeat: versions,
#: locales, plan names). Only those are kept, so no identifier stays in
#: memory for it; bounded, since clients choose the values.
_PLAIN: set[str] = set()
_PLAIN_MAX = 4096


def looks_identifying(text: str) -> bool:
    """Whether ``text`` holds something shaped like an identifier."""
    if text in _PLAIN or not _TRIGGER.search(text):
        return False
    if _ANY.search(text):
        return True
    if len(_PLAIN) < _PLAIN_MAX:
        _PLAIN.add(text)
    return False


def screens(value: Any) -> bool:
    """Whether a scalar that was to stay in clear must be sealed instead:
    a string that :func:`looks_identifying`, or an integer of 7 or more
    digits (a number written without its separators)."""
    kind = type(value)
    if kind is str:
        return looks_identifying(value)
    if kind is int:
        return value >= LONG_INTEGER or value <= -LONG_INTEGER
    return False


class ScreenedCounter:
    """Counts values sealed by the screen (``phi_screened`` in the figures)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def add(self, count: int) -> None:
        """Count ``count`` screened values. Only events that hold such a
        value pay this write; a figure is not worth failing their ingest."""
        try:
            self._redis.incrby(keyspace.PHI_SCREENED, count)
        except TRANSIENT_ERRORS:
            pass

    def total(self) -> int:
        return int(cast(bytes | None, self._redis.get(keyspace.PHI_SCREENED)) or 0)
