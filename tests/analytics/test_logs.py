"""The one scrubbing filter: PHI-looking values never reach a log line."""

from __future__ import annotations

import logging

import pytest

from analytics.logs import PhiScrubbingFilter, configure_logging

PHI = ["jane.doe.7f3c@example.org", "078-05-1120", "+1 555-010-7731", "(555) 010-7731", "patient-7f3c9a"]


@pytest.fixture
def scrub():
    return PhiScrubbingFilter(["diagnosis"]).scrub


@pytest.mark.parametrize(
    "text",
    [
        "contact jane.doe.7f3c@example.org now",
        "ssn 078-05-1120 given",
        "call +1 555-010-7731 or (555) 010-7731",
        "userId=patient-7f3c9a rejected",
        "{'userId': 'patient-7f3c9a', 'n': 1}",
        '{"userId": "patient-7f3c9a"}',
        '{"USERID":"patient-7f3c9a"}',
        "anonymousId: patient-7f3c9a",
        "GET /v1/events?type=click&userId=patient-7f3c9a HTTP/1.1",
        "KeyError('jane.doe.7f3c@example.org')",
        'name="patient-7f3c9a smith"',
        "Authorization: Bearer ak_patient-7f3c9a0123456789",
    ],
)
def test_phi_values_are_redacted(scrub, text) -> None:
    out = scrub(text)
    assert "[redacted]" in out
    for value in PHI:
        assert value not in out, out


def test_configured_fields_and_harmless_text(scrub) -> None:
    assert "flu" not in scrub("diagnosis=flu")
    harmless = (
        "stored 50 events in 0.0123 s; queue analytics:events:queue "
        "entry 1732790000000-0 task 8f3a2b1c-1d2e-4f50-9a8b-7c6d5e4f3a2b"
    )
    assert scrub(harmless) == harmless
    assert scrub(scrub("email=a@b.co")) == scrub("email=a@b.co")


def test_records_are_scrubbed_at_creation_with_tracebacks(caplog) -> None:
    configure_logging()
    log = logging.getLogger("tests.logs")
    with caplog.at_level(logging.INFO):
        log.info("user %s sent %r", "patient-7f3c9a", {"email": "jane.doe.7f3c@example.org"})
        try:
            raise ValueError("bad ssn 078-05-1120 for jane.doe.7f3c@example.org")
        except ValueError:
            log.exception("failed")
    text = caplog.text
    assert "failed" in text and "ValueError" in text
    for value in ("jane.doe.7f3c@example.org", "078-05-1120"):
        assert value not in text
