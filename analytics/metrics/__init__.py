"""Metrics: samples with tags, rolled up per tier with quantile sketches."""

from __future__ import annotations

from analytics.metrics.sketch import Sketch
from analytics.metrics.store import EMPTY_SERIES, TIERS, MetricCommitResult, MetricStore

__all__ = ["EMPTY_SERIES", "TIERS", "MetricCommitResult", "MetricStore", "Sketch"]
