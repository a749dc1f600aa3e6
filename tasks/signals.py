"""Process start hooks of the worker and beat: refuse to start without
encryption keys (one clear line) and scrub PHI from every log line."""
from __future__ import annotations

import logging
from typing import Any

from celery import signals

from analytics.logs import add_to_handlers
from analytics.startup import start_process


@signals.worker_init.connect
def _check_worker(**_: Any) -> None:
    start_process("worker")


@signals.beat_init.connect
def _check_beat(**_: Any) -> None:
    start_process("beat")


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _scrub_celery_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    # Celery builds its handlers after our import; records are scrubbed at
    # creation already, this also covers records built by hand.
    start_process_logging()
    add_to_handlers(logger)


def start_process_logging() -> None:
    from analytics.logs import install
    from analytics.settings import Settings
    from analytics.errors import ConfigurationError

    try:
        install(Settings.from_env().phi_fields)
    except ConfigurationError:
        install()
