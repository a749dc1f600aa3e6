"""Streaming anomaly detection and forecasting for metric series (standard library + numpy only)."""

from __future__ import annotations

from analytics.anomaly.detector import DEFAULT_THRESHOLD, Detector, DetectorConfig, Score, score_series
from analytics.anomaly.forecast import Forecast, forecast

__all__ = ["DEFAULT_THRESHOLD", "Detector", "DetectorConfig", "Forecast", "Score", "forecast", "score_series"]
