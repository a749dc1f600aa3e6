"""Flower settings, wherever ``celery -A tasks flower`` is started.

Flower reads its settings from ``--conf``, by default ``flowerconfig.py`` in
the working directory, and silently goes without when there is none: started
outside the repository it served Celery's monitoring (which can revoke tasks
and shut workers down) to anyone. So importing :mod:`tasks` (what ``-A tasks``
does before Flower starts) sets ``FLOWER_CONF`` to this file unless it is set
already, and this file is read in every directory; ``flowerconfig.py`` at the
repository's top only imports it. Plain values, one check.

Flower reads ``FLOWER_*`` variables itself: ``FLOWER_BASIC_AUTH=user:password``
(comma-separate several), ``FLOWER_PORT``. Task events come from the workers
(``celeryconfig``: ``worker_send_task_events``, ``task_send_sent_event``).

Flower does not start unauthenticated: without ``FLOWER_BASIC_AUTH`` (or an
OAuth setup via ``FLOWER_AUTH_PROVIDER``) it stops with one line saying so.
A ``--conf`` or ``FLOWER_CONF`` of the operator's own replaces this file,
check included: such a file must set up authentication itself.
"""

import os
import sys

if not (os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH_PROVIDER")):
    sys.exit("flower: set FLOWER_BASIC_AUTH=user:password (refusing to serve Celery monitoring without authentication)")

# Keep the task list bounded in memory.
max_tasks = 10000
# Forget workers that have been offline for 10 minutes.
purge_offline_workers = 600
