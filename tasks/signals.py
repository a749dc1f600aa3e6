"""Process start hooks of the worker and beat: refuse to start without
encryption keys (one clear line) and scrub PHI from every log line."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from analytics.logs import add_to_handlers, install
from analytics.startup import freeze_startup_heap, start_process

# At import (``celery -A tasks``), before Celery logs anything: records are
# scrubbed from the first one (the record factory); the PHI field list of
# the settings is applied at worker/beat init.
install()


@signals.worker_init.connect
def _check_worker(**_: Any) -> None:
    start_process("worker", own_handler=False)


@signals.worker_process_init.connect
def _freeze_heap(**_: Any) -> None:
    # Each pool process, once forked: see freeze_startup_heap.
    freeze_startup_heap()


@signals.beat_init.connect
def _check_beat(**_: Any) -> None:
    start_process("beat", own_handler=False)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _scrub_celery_handlers(logger: logging.Logger | None = None, **_: Any) -> None:
    add_to_handlers(logger)
