"""The live fan-out's parts without a web server: client messages, the
bounded buffer, scoping and throttling in the hub, the summed figures."""

from __future__ import annotations

import threading
import time
from typing import Any

import msgpack
import orjson
import pytest

from analytics.errors import ValidationError
from analytics.events.codec import live_records
from analytics.events.records import split_page
from analytics.live.hub import LiveClient, LiveHub, parse_client_message
from analytics.live.stats import WsCounters, write_ws_stats, ws_totals


@pytest.mark.parametrize(
    "raw, field",
    [
        ("not json", "_schema"),
        ('["subscribe"]', "_schema"),
        ('{"action": "unsubscribe"}', "action"),
        ('{"action": "subscribe", "events": "click"}', "events"),
        ('{"action": "subscribe", "events": [""]}', "events"),
        ('{"action": "subscribe", "events": [{"a": 1}]}', "events"),
        ('{"action": "subscribe", "metrics": [1, 2]}', "metrics"),
        ('{"action": "subscribe", "events": ["' + "x" * 10_000 + '"]}', "events"),
        ('{"action": "subscribe", "colour": "red"}', "_schema"),
        ('{"action": "subscribe", "patient jane@example.com": 1}', "_schema"),
    ],
)
def test_invalid_client_messages_are_rejected_by_field_without_echo(raw: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_client_message(raw)
    details = caught.value.details
    assert field in details
    # Only the protocol's own fields, in fixed words: nothing of the input.
    assert set(details) <= {"_schema", "action", "events", "metrics"}
    text = orjson.dumps(details).decode()  # JSON-able: string keys only
    for fragment in ("colour", '"red"', "jane", "unsubscribe", "xxxx", '"a"', "click"):
        assert fragment not in text


def test_subscriptions_star_means_all_and_absent_means_none() -> None:
    message = parse_client_message('{"action": "subscribe", "events": ["click", "login"]}')
    assert message["events"] == frozenset({"click", "login"}) and message["metrics"] == frozenset()
    message = parse_client_message('{"action": "subscribe", "events": ["*"], "metrics": ["*"]}')
    assert message["events"] is None and message["metrics"] is None


def test_a_full_buffer_closes_the_client_with_1013() -> None:
    client = LiveClient("k1", "", max_buffer=3)
    assert client.offer([b"a", b"b"])
    frames, closing = client.take(0)
    assert frames == [b"a", b"b"] and closing is None
    assert client.offer([b"c", b"d", b"e"])
    assert not client.offer([b"f"])  # 4 waiting > 3
    frames, closing = client.take(0)
    assert frames == [] and closing is not None and closing[0] == 1013 and "too slow" in closing[1]


def test_wake_ends_a_wait_without_frames_once() -> None:
    client = LiveClient("k1", "", max_buffer=3)
    waker = threading.Timer(0.1, client.wake)
    waker.start()
    started = time.monotonic()
    assert client.take(30) == ([], None)  # woken, not timed out
    assert time.monotonic() - started < 10
    started = time.monotonic()
    assert client.take(0.2) == ([], None)  # the wake was used up: this one waits
    assert time.monotonic() - started >= 0.2


def frames_of(client: LiveClient) -> list[dict[str, Any]]:
    frames, _ = client.take(0)
    return [orjson.loads(frame) for frame in frames]


@pytest.fixture
def hub(service: Any) -> LiveHub:
    return LiveHub(service.redis, service.codec, lambda payload: payload, metric_interval=0.5)


def test_hub_scopes_events_by_user_hash_and_filters_by_type(hub: LiveHub, service: Any) -> None:
    scoped = LiveClient("k-scoped", service.codec.user_hash("patient-1"), 100)
    everyone = LiveClient("k-all", "", 100)
    clicks = LiveClient("k-clicks", "", 100)
    clicks.subscribe(frozenset({"click"}), frozenset())
    for client in (scoped, everyone, clicks):
        hub.register(client)
    records = [
        service.codec.encode({"type": t, "userId": u, "properties": {"n": n}}, "normal", int(time.time() * 1000), None)
        for n, (t, u) in enumerate([("click", "patient-1"), ("login", "patient-2"), ("click", "patient-2")])
    ]
    assert all("patient" not in orjson.dumps(r).decode() for r in records)  # sealed, hashed
    hub.handle(b"analytics:live:events", orjson.dumps(records))
    assert [m["data"]["properties"]["n"] for m in frames_of(scoped)] == [0]
    assert [m["data"]["properties"]["n"] for m in frames_of(everyone)] == [0, 1, 2]
    assert [m["data"]["properties"]["n"] for m in frames_of(clicks)] == [0, 2]
    assert frames_of(everyone) == []
    assert hub.counters.snapshot()["clients"] == 3


def test_a_commit_publishes_the_new_records_of_each_page_as_one_string(service: Any) -> None:
    pubsub = service.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("analytics:live:events")
    now = int(time.time())  # one timestamp: one page per type
    accepted = service.events.track_many(
        [
            {"type": etype, "userId": "u-1", "messageId": f"m-{n}", "timestamp": now}
            for n, etype in enumerate(["click", "click", "login", "click"])
        ]
    ).accepted
    assert accepted == 4
    service.processor.process(service.queue.read("c-1", 10))  # unless the test session's worker was first
    message = None
    for _ in range(100):
        got = pubsub.get_message(timeout=0.1)
        if got is not None:
            message = got["data"]
            break
    pubsub.close()
    assert message is not None
    flat = msgpack.unpackb(message, raw=True)
    assert flat[0::2] == [b"click", b"login"]  # one string per page, not one per record
    published = [service.codec.decode(r, reveal_phi=True)["messageId"] for r in live_records(message)]
    assert published == ["m-0", "m-1", "m-3", "m-2"]
    # The form published before (one blob per record) is still read.
    one_by_one = [
        part for k in range(0, len(flat), 2) for _, blob in split_page(flat[k + 1]) for part in (flat[k], blob)
    ]
    assert len(one_by_one) == 8
    assert live_records(msgpack.packb(one_by_one)) == live_records(message)


def test_hub_throttles_metrics_per_series_and_flushes_the_latest(hub: LiveHub) -> None:
    client = LiveClient("k", "", 100)
    hub.register(client)

    def update(count: int, route: str = "/a") -> bytes:
        return orjson.dumps(
            [
                {
                    "name": "lat",
                    "tags": {"route": route},
                    "bucket": 60,
                    "resolution": 60,
                    "count": count,
                    "sum": count,
                    "min": 1,
                    "max": count,
                }
            ]
        )

    hub.handle("analytics:live:metrics", update(1))
    hub.handle("analytics:live:metrics", update(2))
    hub.handle("analytics:live:metrics", update(3))
    hub.handle("analytics:live:metrics", update(1, route="/b"))  # another series
    assert [(m["data"]["tags"]["route"], m["data"]["count"]) for m in frames_of(client)] == [("/a", 1), ("/b", 1)]
    hub.flush_metrics(time.monotonic())
    assert frames_of(client) == []  # the interval has not passed
    time.sleep(0.55)
    hub.flush_metrics(time.monotonic())
    assert [m["data"]["count"] for m in frames_of(client)] == [3]  # coalesced to the latest


def test_ws_totals_sum_the_live_processes(data: Any) -> None:
    assert ws_totals(data)["processes"] == 0
    a, b = WsCounters(), WsCounters()
    a.add(clients=3, messages=100, errors=1, auth_failures=2)
    b.add(clients=2, messages=50, auth_failures=1)
    write_ws_stats(data, "host-1", a.snapshot())
    write_ws_stats(data, "host-2", b.snapshot())
    totals = ws_totals(data)
    assert {
        k: totals[k] for k in ("clients", "messages_total", "errors_total", "auth_failures_total", "processes")
    } == {"clients": 5, "messages_total": 150, "errors_total": 1, "auth_failures_total": 3, "processes": 2}
    assert totals["updated"] is not None and abs(totals["updated"] - time.time()) < 5
    assert 0 < data.ttl("analytics:stats:ws:host-1") <= 30


def test_a_revocation_notice_closes_the_clients_of_the_key_and_the_erased_user(hub: LiveHub, service: Any) -> None:
    revoked = LiveClient("k-revoked", "", 100)
    erased = LiveClient("k-erased-user", "u-hash-1", 100)
    other = LiveClient("k-other", "u-hash-2", 100)
    for client in (revoked, erased, other):
        hub.register(client)
    assert revoked.offer([b"waiting"])
    hub.handle(b"analytics:live:revoked", orjson.dumps({"keys": ["k-revoked"], "users": ["u-hash-1"]}))
    assert revoked.take(0) == ([], (1008, "key revoked"))  # the waiting frame is dropped
    assert erased.take(0)[1] == (1008, "access revoked: user erased")
    assert other.closing is None
    # A client of that key registering just after (it authenticated before
    # the notice) is closed too.
    late = LiveClient("k-revoked", "", 100)
    hub.register(late)
    assert late.closing == (1008, "key revoked")
    # Malformed notices are ignored.
    hub.handle(b"analytics:live:revoked", b"[1, 2]")
    hub.handle(b"analytics:live:revoked", b"not json")
    assert other.closing is None


def test_the_key_check_closes_clients_of_revoked_expired_or_unknown_keys(hub: LiveHub, service: Any) -> None:
    _, good = service.access.create("read")
    _, bad = service.access.create("read")
    clients = [LiveClient(good.id, "", 100), LiveClient(bad.id, "", 100), LiveClient("no-such-key", "", 100)]
    for client in clients:
        hub.register(client)
    assert hub.check_keys() == 1  # the unknown key
    service.api_keys.revoke(bad.id)  # the store only: no notice published
    assert hub.check_keys() == 1
    assert [c.closing for c in clients] == [None, (1008, "key revoked"), (1008, "key revoked")]
    # An expired key is closed as well (the check is how expiry reaches a stream).
    _, expired = service.api_keys.create("read", expires=time.time() - 1)
    late = LiveClient(expired.id, "", 100)
    hub.register(late)
    assert hub.check_keys() == 1 and late.closing == (1008, "key revoked")


def test_events_are_redacted_for_a_client_without_phi_access(hub: LiveHub, service: Any) -> None:
    full = LiveClient("k-full", "", 100)
    redacted = LiveClient("k-redacted", "", 100, reveal_phi=False)
    hub.register(full)
    hub.register(redacted)
    record = service.codec.encode(
        {"type": "custom", "userId": "patient-9", "properties": {"n": 1}}, "normal", int(time.time() * 1000), None
    )
    hub.handle(b"analytics:live:events", orjson.dumps([record]))
    [seen] = frames_of(full)
    [hidden] = frames_of(redacted)
    assert seen["data"]["userId"] == "patient-9"
    assert "patient-9" not in orjson.dumps(hidden).decode()
    assert hidden["data"] == service.codec.decode(record, reveal_phi=False)
