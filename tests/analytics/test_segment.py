"""Mapping Segment messages to events (no Redis needed)."""

from __future__ import annotations

import pytest
from marshmallow import ValidationError

from analytics.events.segment import segment_message_schema, to_event


def load(message: dict) -> dict:
    return segment_message_schema.load(message)


def test_track_keeps_its_fields_and_name() -> None:
    message = load(
        {
            "type": "track",
            "event": "Order Completed",
            "userId": 42,
            "anonymousId": "anon",
            "properties": {"amount": 9.5},
            "context": {"library": {"version": "2.4.0"}},
            "messageId": "m-1",
            "timestamp": "2026-11-28T10:00:00.123Z",
            "integrations": {"All": True},
            "channel": "server",
        }
    )
    event = to_event(message, "Order Completed")
    assert event == {
        "type": "Order Completed",
        "userId": "42",
        "anonymousId": "anon",
        "messageId": "m-1",
        "properties": {"amount": 9.5},
        "context": {"library": {"version": "2.4.0"}},
        "timestamp": "2026-11-28T10:00:00.123Z",
        "metadata": {"integrations": {"All": True}, "channel": "server"},
    }


def test_calls_keep_their_specific_fields_in_metadata() -> None:
    page = to_event(
        load({"type": "page", "userId": "u", "name": "Home", "category": "Docs", "properties": {"path": "/"}}), "page"
    )
    assert page["metadata"] == {"name": "Home", "category": "Docs"}
    group = to_event(load({"type": "group", "userId": "u", "groupId": "g-1", "traits": {"plan": "pro"}}), "group")
    assert group["metadata"] == {"groupId": "g-1"} and group["traits"] == {"plan": "pro"}
    alias = to_event(load({"type": "alias", "userId": "u", "previousId": "old"}), "alias")
    assert alias["metadata"] == {"previousId": "old"}


def test_batch_context_and_integrations_are_merged_message_wins() -> None:
    message = load(
        {"type": "identify", "userId": "u", "context": {"ip": "1.2.3.4", "a": 1}, "integrations": {"X": False}}
    )
    event = to_event(message, "identify", None, {"a": 0, "b": 2}, {"All": True, "X": True})
    assert event["context"] == {"a": 1, "b": 2, "ip": "1.2.3.4"}
    assert event["metadata"]["integrations"] == {"All": True, "X": False}


def test_original_timestamp_stands_in_for_a_missing_timestamp() -> None:
    event = to_event(load({"type": "identify", "userId": "u", "originalTimestamp": "2026-01-01T00:00:00Z"}), "identify")
    assert event["timestamp"] == "2026-01-01T00:00:00Z"


def test_unknown_names_are_kept_when_stored_as_custom() -> None:
    event = to_event(load({"type": "track", "userId": "u", "event": "Odd (name)"}), "custom", "Odd (name)")
    assert event["type"] == "custom" and event["metadata"] == {"event": "Odd (name)"}


def test_write_key_and_receive_times_are_not_kept() -> None:
    event = to_event(
        load(
            {
                "type": "identify",
                "userId": "u",
                "writeKey": "secret",
                "sentAt": "2026-01-01T00:00:00Z",
                "receivedAt": "x",
            }
        ),
        "identify",
    )
    assert "secret" not in str(event) and "metadata" not in event


@pytest.mark.parametrize(
    "message, field",
    [
        ({"type": "track", "userId": "u"}, "event"),
        ({"type": "launch", "userId": "u"}, "type"),
        ({"userId": "u"}, "type"),
        ({"type": "identify", "userId": "u", "sentAt": "yesterday"}, "sentAt"),
    ],
)
def test_invalid_messages_name_the_field(message: dict, field: str) -> None:

    with pytest.raises(ValidationError) as info:
        load(message)
    assert field in info.value.normalized_messages()
