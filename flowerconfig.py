"""Flower settings: ``celery -A tasks flower`` reads this file from the
working directory (Flower's default ``--conf``). Plain values, one check.

Flower reads ``FLOWER_*`` variables itself: ``FLOWER_BASIC_AUTH=user:password``
(comma-separate several), ``FLOWER_PORT``. Task events come from the workers
(``celeryconfig``: ``worker_send_task_events``, ``task_send_sent_event``).

Flower can revoke tasks and shut workers down, so it does not start
unauthenticated: without ``FLOWER_BASIC_AUTH`` (or an OAuth setup via
``FLOWER_AUTH_PROVIDER``) it stops with one line saying so.
"""

import os
import sys

if not (os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH_PROVIDER")):
    sys.exit("flower: set FLOWER_BASIC_AUTH=user:password (refusing to serve Celery monitoring without authentication)")

# Keep the task list bounded in memory.
max_tasks = 10000
# Forget workers that have been offline for 10 minutes.
purge_offline_workers = 600
