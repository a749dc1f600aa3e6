"""Celery side of the service: ``celery -A tasks worker|beat|flower``
(the app is :data:`tasks.celery.app`).

Tasks are thin: each one calls :mod:`analytics` and returns.
"""

import os
from pathlib import Path

# Flower reads ``flowerconfig.py`` from the working directory only, and goes
# without (unauthenticated) when there is none: point it at the project's
# settings, which refuse to start without authentication, wherever
# ``celery -A tasks flower`` starts (an operator's FLOWER_CONF wins).
os.environ.setdefault("FLOWER_CONF", str(Path(__file__).with_name("flowerconfig.py")))
