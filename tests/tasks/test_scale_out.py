"""Nothing depends on one process: recovery runs without beat, and a second
beat sends nothing while the first holds beat's lock.

``slow``: each test starts its own Redis and Celery processes.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest

from analytics import keyspace
from testkit import stored_events, wait_until
from tests.tasks.test_faults import assert_events_stored_once, held, send_events


def trickle(client: Any, headers: dict[str, str], expected: list[int]) -> None:
    """One more event (traffic goes on): it wakes a worker."""
    n = len(expected)
    response = client.post(
        "/v1/events", json={"type": "click", "userId": "u", "messageId": f"trickle-{n}"}, headers=headers
    )
    assert response.status_code == 202
    expected.append(1)


@pytest.mark.slow
def test_without_beat_a_worker_takes_over_a_killed_workers_entries(make_stack) -> None:
    stack = make_stack(ANALYTICS_BATCH_SIZE="8")  # and no beat at all
    worker = stack.worker(concurrency=1)
    app = stack.app()
    service = app.extensions["analytics"]
    secret, _ = service.access.create("ingest")
    headers = {"Authorization": f"Bearer {secret}"}
    accepted: list[int] = []
    sender = threading.Thread(target=send_events, args=(app.test_client(), headers, "ev", 5000, accepted, 50, 0.03))
    sender.start()
    left_pending = 0
    for _ in range(10):  # until a kill leaves entries held by the dead worker
        wait_until(lambda: held(service) > 0 or not sender.is_alive(), 20, 0.001, "a worker to hold entries")
        worker.kill(signal.SIGKILL)
        worker.proc.wait(10)
        left_pending = held(service)
        worker = stack.worker(concurrency=1)
        if left_pending:
            break
    assert left_pending, "no kill left entries pending: proved nothing"
    sender.join(120)
    assert sum(accepted) == 5000
    data = stack.redis.client()
    trickled: list[int] = []
    client = app.test_client()
    wait_until(
        lambda: (
            trickle(client, headers, trickled)
            or (stored_events(data) == 5000 + len(trickled) and held(service) == 0 and service.queue.length() == 0)
        ),
        90,
        0.5,
        "the dead worker's entries to be taken over by the live one",
    )
    # Logged when the processing run that claimed them ends (within its budget).
    wait_until(lambda: "took over" in worker.log(), 20, 0.1, "the live worker to say it took entries over")
    assert stored_events(data) == 5000 + len(trickled)
    assert_events_stored_once(data, 5000 + len(trickled))


@pytest.mark.slow
def test_a_second_beat_sends_nothing_while_the_first_holds_the_lock(make_stack) -> None:
    stack = make_stack(ANALYTICS_BEAT_LOCK_SECONDS="2", ANALYTICS_CLEANUP_INTERVAL="1")
    stack.worker(concurrency=1)
    beats = {proc.pid: proc for proc in (stack.beat("beat-a"), stack.beat("beat-b"))}
    data = stack.redis.client()

    def sent() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in data.hgetall(keyspace.BEAT_STATS).items()}

    def cleanups() -> int:
        return int(data.hget(keyspace.CLEANUP_STATS, "runs") or 0)

    wait_until(lambda: sum(sent().values()) >= 8 and cleanups() >= 2, 60, 0.2, "periodic tasks sent and run")
    first = sent()
    assert len(first) == 1, f"both beats sent periodic tasks: {first}"
    (holder,) = first
    assert data.get(keyspace.BEAT_LOCK).decode() == holder
    # The holder is a pid of ours: kill it; the other takes over.
    leader = next(pid for pid in beats if f"-{pid}-" in holder)
    beats[leader].kill(signal.SIGKILL)
    beats[leader].proc.wait(10)
    before = cleanups()
    wait_until(lambda: len(sent()) == 2 and cleanups() >= before + 2, 60, 0.2, "the standby beat to take over")
    (successor,) = set(sent()) - {holder}
    assert data.get(keyspace.BEAT_LOCK).decode() == successor
    assert f"-{next(pid for pid in beats if pid != leader)}-" in successor
    for beat in beats.values():
        assert "Traceback" not in beat.log(), beat.log()[-5000:]
