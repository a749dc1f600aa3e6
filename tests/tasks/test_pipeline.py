"""The processing pipeline with real workers: priorities, crashes, outages."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from analytics.events.codec import live_records
from testkit import stored_events, wait_until


def queued(service: Any) -> int:
    return service.queue.length()


@pytest.fixture
def idle(make_stack) -> tuple[Any, Any]:
    """A service on a private Redis that no worker reads (the session worker
    may be running): the test plays the worker. Yields (service, data)."""
    stack = make_stack()
    return stack.app().extensions["analytics"], stack.redis.client(0)


def test_commit_of_a_redelivered_entry_is_a_no_op(idle) -> None:
    service, data = idle
    service.events.track_many([{"type": "click", "userId": "u", "messageId": f"m{i}"} for i in range(5)])
    entries = service.queue.read("consumer-a", 10)
    first = service.processor.process(entries)
    again = service.processor.process(entries)  # a second worker committing the same entries
    assert (first.stored, again.stored, again.skipped_entries) == (5, 0, 1)
    assert stored_events(data) == 5 and service.queue.pending() == 0


def test_drain_lingers_for_work_that_arrives_while_it_waits(idle) -> None:

    service, data = idle
    service.events.track({"type": "click", "userId": "u", "messageId": "first"})
    later = threading.Timer(0.1, lambda: service.events.track({"type": "click", "userId": "u", "messageId": "later"}))
    later.start()
    started = time.monotonic()
    report = service.processor.drain("lingerer", budget=5)
    later.join()
    # One drain stored both: it waited (about 0.2 s in tests) instead of ending
    # when the queue first ran dry, and it still ended well before its budget.
    assert report.committed.stored == 2
    assert time.monotonic() - started < 2
    assert stored_events(data) == 2


def test_stale_entries_are_claimed_from_dead_consumers(idle) -> None:
    service, _ = idle
    service.events.track_many([{"type": "click", "userId": "u"} for _ in range(3)])
    assert service.queue.read("dead-consumer", 10)  # read, never committed
    assert service.processor.recover("rescuer").entries == 0  # not idle long enough yet
    time.sleep(service.settings.claim_idle_seconds + 0.2)
    report = service.processor.recover("rescuer")
    assert report.entries == 1 and report.committed.stored == 3
    assert service.queue.pending() == 0


@pytest.mark.slow
def test_backlog_drains_highest_priority_first(make_stack) -> None:
    stack = make_stack(ANALYTICS_BATCH_SIZE="10")
    service = stack.app().extensions["analytics"]
    for i in range(200):
        service.events.track({"type": "click", "userId": "u", "priority": "low", "messageId": f"low-{i}"})
    for i in range(20):
        service.events.track({"type": "click", "userId": "u", "priority": "critical", "messageId": f"crit-{i}"})
    order: list[str] = []
    pubsub = stack.redis.client().pubsub()
    pubsub.subscribe("analytics:live:events")

    def listen() -> None:
        for message in pubsub.listen():
            if message["type"] == "message":
                order.extend(r["p"] for r in live_records(message["data"]))
            if len(order) >= 220:
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_until(lambda: pubsub.subscribed, 5)
    stack.worker(concurrency=1)
    listener.join(60)
    assert len(order) == 220
    last_critical = max(i for i, priority in enumerate(order) if priority == "critical")
    assert last_critical < 40, f"critical events were stored late (last at {last_critical})"


def test_a_lost_queue_stream_is_made_again_and_read_from(idle) -> None:
    """Redis without AOF restarted: the lanes and their consumer groups are
    gone. Reading and claiming make the groups again instead of failing,
    and what is queued afterwards is read."""
    service, data = idle
    service.events.track_many([{"type": "click", "userId": "u"}])
    assert service.queue.read("worker", 10)
    data.delete(*service.queue.lanes)
    assert service.queue.read("worker", 10) == []
    assert service.queue.claim_stale("worker", 0, 10) == []
    service.events.track_many([{"type": "click", "userId": "u", "priority": "low"}])
    (entry,) = service.queue.read("worker", 10)
    assert len(entry.items) == 1
