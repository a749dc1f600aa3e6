"""The dashboard (``GET /``) in a real headless Chromium (Debian's, driven by
playwright), against a real gunicorn server, the session's Celery worker
and Redis: a person types a read key, events are ingested, the feed and the
chart show them, a web restart is survived. Screenshots go to
``test-artifacts/``."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from testkit import ARTIFACTS
from tests.webservers import WebServer

playwright_api = pytest.importorskip("playwright.sync_api")


def ingest(web: WebServer, key: str, events: list[dict[str, Any]]) -> None:
    response = requests.post(
        web.url + "/v1/events", json={"batch": events}, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 202, response.text


def drawn_pixels(page: Any, selector: str) -> int:
    """Pixels of the chart's canvas that are not blank."""
    return page.evaluate(
        """(selector) => {
        const canvas = document.querySelector(selector + ' canvas');
        if (!canvas) return 0;
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
        return n;
    }""",
        selector,
    )


def test_dashboard_shows_live_events_and_charts_and_survives_a_restart(web, page, service) -> None:
    read_key, _ = service.access.create("read")
    ingest_key, _ = service.access.create("ingest")
    page.goto(web.url + "/")
    assert page.title().startswith("Analytics")
    page.fill("#key", read_key)
    page.click("#connect")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Live')", timeout=15_000)
    # The key is in this tab's session storage, never in the address.
    assert read_key not in page.url
    assert page.evaluate("sessionStorage.getItem('analytics.readKey')") == read_key

    ingest(
        web,
        ingest_key,
        [{"type": "page_view", "userId": "u-1", "properties": {"path": f"/p{i}"}} for i in range(5)]
        + [{"type": "click", "userId": "u-2", "properties": {"button": "buy"}} for _ in range(3)],
    )
    page.wait_for_function("() => document.querySelectorAll('#feed li').length >= 8", timeout=20_000)
    feed = page.inner_text("#feed")
    assert "page_view" in feed and "click" in feed and "/p4" in feed

    # The events-per-minute chart drew points for both types.
    page.wait_for_function(
        """() => {
        const chart = window.analyticsDashboard.charts.rate;
        return chart && chart.series.length === 3
            && chart.data.slice(1).some(s => s.some(v => v > 0));
    }""",
        timeout=10_000,
    )
    counts = page.evaluate("""() => {
        const chart = window.analyticsDashboard.charts.rate;
        const out = {};
        chart.series.slice(1).forEach((s, i) => {
            out[s.label] = chart.data[i + 1].reduce((a, b) => a + (b || 0), 0);
        });
        return out;
    }""")
    assert counts["page_view"] == 5 and counts["click"] == 3
    assert drawn_pixels(page, "#rate-chart") > 500

    # Filter the feed by type.
    page.select_option("#type-filter", "click")
    page.wait_for_function(
        """() => {
        const rows = [...document.querySelectorAll('#feed li')];
        return rows.length === 3 && rows.every(r => r.dataset.type === 'click');
    }""",
        timeout=5_000,
    )
    page.select_option("#type-filter", "")

    # The monitoring figures of /v1/stats, workers listed by name.
    page.wait_for_function(
        "() => document.getElementById('figures-note').textContent.includes('Updated')", timeout=10_000
    )
    page.click("#system summary")  # the details are collapsed until asked for
    figures = page.inner_text("#figures")
    assert "rate per second" in figures and "batch ms p99" in figures
    assert "[object Object]" not in figures
    # The metrics API: a metric never written has no samples; once some are
    # rolled up, the chart shows them.
    page.fill("#metric-name", "api.latency")
    page.click("#metric-form button")
    page.wait_for_function(
        "() => document.getElementById('metric-note').textContent.startsWith('No samples')", timeout=10_000
    )
    response = requests.post(
        web.url + "/v1/metrics",
        headers={"Authorization": f"Bearer {ingest_key}"},
        json={"batch": [{"name": "api.latency", "value": v} for v in (12, 40, 95)]},
        timeout=10,
    )
    assert response.status_code == 202
    page.wait_for_function(
        """() => {
        document.querySelector('#metric-form button').click();
        return document.getElementById('metric-note').textContent.startsWith('Per minute');
    }""",
        timeout=20_000,
        polling=500,
    )
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # A web restart: the page says it lost the stream, reconnects by itself.
    web.stop()
    page.wait_for_function(
        "() => /Reconnecting|Cannot connect|Connection lost/.test(document.getElementById('status').textContent)",
        timeout=10_000,
    )
    page.screenshot(path=str(ARTIFACTS / "dashboard-reconnecting.png"), full_page=True)
    web.start()
    page.wait_for_function(
        "() => document.getElementById('status').textContent === 'Live (reconnected)'", timeout=40_000
    )
    ingest(web, ingest_key, [{"type": "logout", "userId": "u-1", "properties": {"after": "restart"}}])
    page.wait_for_function("() => document.getElementById('feed').textContent.includes('restart')", timeout=20_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-reconnected.png"), full_page=True)
    assert page.errors == []


def test_a_rejected_key_is_forgotten_and_asked_for_again(web, page) -> None:
    page.goto(web.url + "/")
    page.fill("#key", "not-a-valid-key")
    page.click("#connect")
    page.wait_for_selector("#login-error:not([hidden])", timeout=15_000)
    assert "rejected" in page.inner_text("#login-error")
    assert page.evaluate("sessionStorage.getItem('analytics.readKey')") is None
    assert page.is_visible("#key")


def test_the_dashboard_works_with_a_read_key_without_phi_access(web, page, service) -> None:
    read_key, _ = service.access.create("read", phi=False)
    ingest_key, _ = service.access.create("ingest")
    page.goto(web.url + "/")
    page.fill("#key", read_key)
    page.click("#connect")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Live')", timeout=15_000)
    ingest(web, ingest_key, [{"type": "form_submit", "userId": "u-minimum-17", "properties": {"plan": "basic"}}] * 2)
    page.wait_for_function("() => document.querySelectorAll('#feed li').length >= 2", timeout=20_000)
    feed = page.inner_text("#feed")
    # The user id is sealed: the feed shows the marker, never the id.
    assert "form_submit" in feed and "[redacted]" in feed and "u-minimum-17" not in feed
    page.wait_for_function(
        "() => document.getElementById('figures-note').textContent.includes('Updated')", timeout=10_000
    )
    page.wait_for_function(
        """() => {
        const chart = window.analyticsDashboard.charts.rate;
        return chart && chart.series.some(s => s.label === 'form_submit');
    }""",
        timeout=10_000,
    )
    assert page.errors == []


def test_a_user_scoped_key_is_told_why_the_figures_are_missing(web, page, service) -> None:
    read_key, key = service.access.create("read", user_id="u-scoped-dash", phi=False)
    page.goto(web.url + "/")
    page.fill("#key", read_key)
    page.click("#connect")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Live')", timeout=15_000)
    page.wait_for_function(
        "() => document.getElementById('figures-note').textContent.includes('user-scoped')", timeout=10_000
    )
    # The refusal does not change: the page stops asking (each is audited).
    page.wait_for_timeout(6_000)
    denied = [e for e in service.auditor.page(None, 1000)[0] if e["action"] == "access.denied" and e["actor"] == key.id]
    assert [e["path"] for e in denied] == ["/v1/stats"]
    assert page.errors == []
