"""Streaming anomaly detection and forecasting for metric series (standard library + numpy only)."""

from __future__ import annotations

from analytics.anomaly.detector import DEFAULT_THRESHOLD, Detector, DetectorConfig, Score, score_series

__all__ = ["DEFAULT_THRESHOLD", "Detector", "DetectorConfig", "Score", "score_series"]
