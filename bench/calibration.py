"""How fast is this machine, against the reference machine the performance targets were set on?

The targets quote two reference costs measured on the reference machine: a
marshmallow ``Schema.load`` of a typical event (about 21 us) and a Celery
``.delay()`` (about 350 us of CPU). Both are measured here, in this process,
as CPU time per call, and divided by the quoted figure: a speed factor of 2
means this machine (as loaded now) is twice as slow as the reference one.
Information only: nothing here passes or fails.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery

from analytics.events.schemas import event_schema
from bench.harness import event_batch
from testkit import RedisServer

#: The reference machine's costs, in CPU microseconds per call.
QUOTED_SCHEMA_LOAD_US = 21.0
QUOTED_DELAY_US = 350.0


def cpu_us_per_call(fn: Callable[[], Any], calls: int, reps: int = 3) -> float:
    """Median over ``reps`` timings of ``calls`` calls, after a warm-up.
    CPU time rather than wall time, so a neighbour taking the core while we
    wait counts less (it still costs caches and frequency)."""
    for _ in range(min(calls, 100)):
        fn()
    timings = []
    for _ in range(reps):
        started = time.process_time()
        for _ in range(calls):
            fn()
        timings.append((time.process_time() - started) * 1e6 / calls)
    return statistics.median(timings)


def schema_load_us(calls: int) -> float:

    event = event_batch(1, "calibration")[0]
    return cpu_us_per_call(lambda: event_schema.load(event), calls)


def delay_us(calls: int) -> float:
    """A no-op task sent to a private Redis with no worker: only the
    client's side of ``.delay()`` is timed. The Celery app is set up like the
    naive baseline's (``bench/naive.py``), the design the quoted figure is for."""
    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as tmp:
        # fsync once a second, like the bench's Stack: fsyncs would only add waiting.
        server = RedisServer(Path(tmp) / "redis", appendfsync="everysec").start()
        try:
            app = Celery("calibration", broker=server.url(1))
            app.conf.update(task_ignore_result=True)

            @app.task(name="calibration.noop")
            def noop() -> None:
                pass

            return cpu_us_per_call(noop.delay, calls)
        finally:
            server.stop()


def run(quick: bool) -> dict[str, Any]:
    schema = schema_load_us(300 if quick else 3_000)
    delay = delay_us(200 if quick else 2_000)
    schema_factor = schema / QUOTED_SCHEMA_LOAD_US
    delay_factor = delay / QUOTED_DELAY_US
    return {
        "schema_load_us": schema,
        "schema_load_quoted_us": QUOTED_SCHEMA_LOAD_US,
        "schema_load_speed_factor": schema_factor,
        "delay_cpu_us": delay,
        "delay_cpu_quoted_us": QUOTED_DELAY_US,
        "delay_speed_factor": delay_factor,
        "speed_factor_geomean": statistics.geometric_mean([schema_factor, delay_factor]),
    }
