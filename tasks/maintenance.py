"""Periodic housekeeping (beat): retention cleanup, audit checkpoints."""

from __future__ import annotations

import logging
from typing import Any

from tasks.base import analytics, task
from tasks.celery_app import AUDIT_CHECKPOINT, CLEANUP

log = logging.getLogger(__name__)


@task(CLEANUP)
def cleanup() -> dict[str, Any]:
    """Beat: remove expired events and rollup buckets, in bounded slices."""
    return analytics().ops.cleanup().as_dict()


@task(AUDIT_CHECKPOINT)
def audit_checkpoint() -> dict[str, Any]:
    """Beat: anchor the audit log outside Redis, a signed checkpoint appended
    to ``ANALYTICS_AUDIT_CHECKPOINTS`` (nothing when unset or unchanged)."""
    return analytics().audit.checkpoint().as_dict()
