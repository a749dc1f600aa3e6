"""Real-time analytics: the domain core (no Flask, no Celery)."""
from __future__ import annotations

from analytics.errors import AnalyticsError
from analytics.service import AnalyticsService
from analytics.settings import Settings

__all__ = ["AnalyticsError", "AnalyticsService", "Settings"]
