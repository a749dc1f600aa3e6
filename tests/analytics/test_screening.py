"""The identifier screen: what it catches, what it leaves, and that the log
scrubber uses the very same patterns."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics import logs
from analytics.privacy import screening
from analytics.privacy.screening import looks_identifying, screens

IDENTIFIERS = [
    "jane.doe@example.org",
    "mail me: j@x.io please",
    "555-201-0064",
    "Called 555-201-0064",
    "(555) 201-0064",
    "+15552010064",
    "+44 20 7946 0958",
    "078-05-1120",
    "1980-04-12",
    "04/12/1980",
    "4/12/80",
    "12.04.1980",
    "April 12, 1980",
    "born 12 Apr 1980",
    "12 Elm Street",
    "400 N Main Ave",
    "P.O. Box 1234",
    "10.0.0.7",
    "from 203.0.113.77",
    "2001:db8::1",
    "fe80::1ff:fe23:4567:890a",
    "https://portal.example.org/chart?patient=42",
    "/search?q=jane",
    "https://jane@host.example/",
    "MRN 0012345678",
    "acct-12345678",
]

CLEAR = [
    "pro",
    "analytics.js",
    "4.1.0",
    "14.2.10",
    "en-US",
    "America/New_York",
    "Pixel 8",
    "iOS",
    "page_view",
    "Order Completed",
    "checkout step 2",
    "/docs/getting-started",
    "https://example.org/pricing",
    "10:30",
    "std::vector",
    "v2",
    "123456",
    "",
]


@pytest.mark.parametrize("text", IDENTIFIERS)
def test_identifier_shapes_are_caught(text: str) -> None:
    assert looks_identifying(text), text


@pytest.mark.parametrize("text", CLEAR)
def test_structural_values_pass(text: str) -> None:
    assert not looks_identifying(text), text


def test_scalars_are_screened_by_type() -> None:
    assert screens("jane@example.org") and screens(5552010064) and screens(-1234567)
    assert not screens(1920) and not screens(999_999) and not screens(52.37) and not screens(True)
    assert not screens(None) and not screens("pro")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz ._-/", max_size=40))
def test_text_without_digits_at_or_query_is_never_caught(text: str) -> None:
    assert not looks_identifying(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.sampled_from(IDENTIFIERS), st.text(max_size=30))
def test_an_identifier_inside_any_text_is_caught(before: str, identifier: str, after: str) -> None:
    assert looks_identifying(f"{before} {identifier} {after}")


def test_logs_and_screening_share_one_set_of_patterns() -> None:
    assert logs._EMAIL is screening.EMAIL and logs._SSN is screening.SSN and logs._PHONE is screening.PHONE
    scrubbed = logs.PhiScrubbingFilter().scrub("write to jane@example.org or 555-201-0064, SSN 078-05-1120")
    assert "jane@example.org" not in scrubbed and "555-201-0064" not in scrubbed and "078-05-1120" not in scrubbed
