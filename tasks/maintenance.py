"""Periodic housekeeping (beat): retention cleanup."""

from __future__ import annotations

import logging
from typing import Any

from tasks.base import analytics, task
from tasks.celery_app import CLEANUP

log = logging.getLogger(__name__)


@task(CLEANUP)
def cleanup() -> dict[str, Any]:
    """Beat: remove expired events and rollup buckets, in bounded slices."""
    return analytics().ops.cleanup().as_dict()
