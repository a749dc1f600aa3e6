"""The dashboard's anomalies, in a real headless Chromium against a real
gunicorn server and the test run's Celery worker: a metric's history goes
through the API, the worker's live detection scores it, and the metric
chart marks the anomaly at its bucket with the expected band shaded there,
lists it in the table under the chart (the markers' text alternative), once
as a ``{"kind": "anomaly"}`` stream frame and once loaded from
``GET /v1/metrics/{name}/anomalies``. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import requests

from analytics import keyspace
from analytics.anomaly.detector import Detector
from analytics.metrics.store import EMPTY_SERIES
from testkit import ARTIFACTS, ROOT, wait_until
from tests.webservers import WebServer

AXE = ROOT / "tests" / "web" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
NAME = "dash.latency"
RES = 60  # ANALYTICS_ANOMALY_RESOLUTION of the shared test stack (the default)
POINTS = 240  # past the detector's 192 points of warm-up

playwright_api = pytest.importorskip("playwright.sync_api")


def post(web: WebServer, key: str, stamps: list[int], values: list[float]) -> None:
    samples = [{"name": NAME, "value": v, "timestamp": t} for t, v in zip(stamps, values, strict=True)]
    response = requests.post(
        web.url + "/v1/metrics", json={"batch": samples}, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(samples)


def choose_metric(page: Any) -> None:
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Live')", timeout=15_000)
    page.fill("#metric-name", NAME)
    page.click("#metric-form button")
    page.wait_for_function(
        "() => /^(Per minute|No samples)/.test(document.getElementById('metric-note').textContent)", timeout=15_000
    )


def pixel(page: Any, bucket: int, value: float) -> list[int]:
    """The metric chart's canvas colour (RGBA) at (bucket, value)."""
    return page.evaluate(
        """([x, y]) => {
        const u = window.analyticsDashboard.charts.metric;
        const px = Math.round(u.valToPos(x, 'x', true)), py = Math.round(u.valToPos(y, 'y', true));
        return Array.from(u.ctx.getImageData(px, py, 1, 1).data);
    }""",
        [bucket, value],
    )


def test_the_metric_chart_marks_anomalies_live_and_loaded(web, page, service) -> None:
    read_key, _ = service.access.create("read")
    ingest_key, _ = service.access.create("ingest")
    # A quiet history ending a few minutes ago whose last bucket is a spike
    # (the detector flags it at any time of day: checked offline first).
    rng = np.random.default_rng(3)
    start = (int(time.time()) // RES - 4 - POINTS) * RES
    stamps = [start + RES * i for i in range(POINTS)]
    values = (20.0 + rng.normal(0.0, 1.0, POINTS)).round(3).tolist()
    values[-1] += 25.0
    offline = Detector()
    expected = [offline.update(float(t), v) for t, v in zip(stamps, values, strict=True)][-1]
    assert expected.alert

    post(web, ingest_key, stamps, values)
    # Scored up to the bucket before the spike's: a bucket stays open until
    # its series has data two buckets later.
    state_key = keyspace.detector_state(NAME, RES, EMPTY_SERIES)
    wait_until(lambda: service.redis.hget(state_key, "last") == str(stamps[-3]).encode(), 30, 0.2, "the detector")

    page.goto(web.url + "/")
    page.fill("#key", read_key)
    page.click("#connect")
    choose_metric(page)
    page.wait_for_function(
        "() => document.getElementById('anomaly-note').textContent.startsWith('No anomalies')", timeout=10_000
    )
    assert page.inner_text("#metric-note").startswith("Per minute")
    assert page.get_attribute("#metric-chart", "data-anomalies") == "0"
    assert not page.is_visible("#anomalies")

    # A sample two buckets later closes the spike's: the worker scores it
    # and the anomaly comes on the stream.
    post(web, ingest_key, [stamps[-1] + 2 * RES], [20.0])
    page.wait_for_function("() => document.querySelectorAll('#anomaly-rows tr').length === 1", timeout=30_000)
    assert page.evaluate("window.analyticsDashboard.state.liveAnomalies") == 1

    answer = requests.get(
        f"{web.url}/v1/metrics/{NAME}/anomalies",
        params={"start": stamps[0]},
        headers={"Authorization": f"Bearer {read_key}"},
        timeout=10,
    ).json()
    [stored] = answer["anomalies"]
    assert stored["bucket"] == stamps[-1] and stored["value"] == values[-1]

    def check_drawn(screenshot: str) -> None:
        row = page.locator("#anomaly-rows tr")
        assert row.get_attribute("data-bucket") == str(stamps[-1])
        when, series, value, band, score = (row.locator("td").nth(i).inner_text() for i in range(5))
        assert when and series == "all"
        assert abs(float(value) - stored["value"]) < 0.01
        low, _, high = band.partition(" to ")
        assert abs(float(low) - stored["lower"]) < 0.01 and abs(float(high) - stored["upper"]) < 0.01
        assert abs(float(score) - stored["score"]) < 0.01
        assert page.get_attribute("#metric-chart", "data-anomalies") == "1"
        assert page.get_attribute("#metric-chart", "data-bands") == "1"
        # The marker (red) at the spike, the band (violet) at the expected value.
        r, g, b, _ = pixel(page, stored["bucket"], stored["value"])
        assert r > 150 and g < 90 and b < 90, (r, g, b)
        r, g, b, _ = pixel(page, stored["bucket"], stored["expected"])
        assert b > g + 15 and r > g, (r, g, b)
        assert "anomaly" in page.inner_text("#metric-chart .u-legend")
        page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)

    check_drawn("dashboard-anomaly-live.png")

    # A fresh page loads it from GET /v1/metrics/{name}/anomalies.
    page.reload()
    choose_metric(page)
    page.wait_for_function("() => document.querySelectorAll('#anomaly-rows tr').length === 1", timeout=10_000)
    assert page.evaluate("window.analyticsDashboard.state.liveAnomalies") == 0
    check_drawn("dashboard-anomaly-loaded.png")
    assert "1 anomaly of dash.latency" in page.inner_text("#anomaly-note")

    # The table and the markers pass axe (no serious or critical violation).
    page.evaluate(AXE.read_text())
    violations = page.evaluate("""async () => {
        const result = await axe.run(document, {resultTypes: ['violations']});
        return result.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                                .map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '));
    }""")
    assert violations == []
    assert page.errors == []


def test_a_user_scoped_key_is_told_why_anomalies_are_missing(web, page, service) -> None:
    read_key, key = service.access.create("read", user_id="u-scoped-anomalies", phi=False)
    page.goto(web.url + "/")
    page.fill("#key", read_key)
    page.click("#connect")
    choose_metric(page)
    page.wait_for_function(
        "() => document.getElementById('anomaly-note').textContent.includes('user-scoped')", timeout=10_000
    )
    # The refusal does not change: asked once, whatever the refreshes.
    page.click("#metric-form button")
    page.wait_for_timeout(1_000)
    denied = [e for e in service.auditor.page(None, 1000)[0] if e["action"] == "access.denied" and e["actor"] == key.id]
    # (the path is the route's; /v1/stats is refused once too)
    assert [e["path"] for e in denied if "anomalies" in e["path"]] == ["/v1/metrics/<path:name>/anomalies"]
    assert page.errors == []
