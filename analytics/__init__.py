"""Real-time analytics: the domain core (no Flask, no Celery, no CLI).

:class:`Analytics` (the composition root) is the Python API; the domain
packages below it are ``events``, ``metrics``, ``pipeline``, ``processing``,
``privacy``, ``live`` and ``ops``.
"""

from __future__ import annotations

from analytics.app import Analytics
from analytics.errors import AnalyticsError
from analytics.settings import Settings

__all__ = ["Analytics", "AnalyticsError", "Settings"]
