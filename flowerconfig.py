"""Flower settings for ``celery -A tasks flower`` started here: they are
:mod:`tasks.flowerconfig` (read in any directory, see there), including its
refusal to start without authentication."""

from tasks.flowerconfig import max_tasks, purge_offline_workers

__all__ = ["max_tasks", "purge_offline_workers"]
