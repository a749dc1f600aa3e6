"""The dashboard leads with what matters: in a real headless Chromium, the
headline figures (matching ``/v1/stats``) and both charts above the fold at
1400x900, a usable page at 390x844, nothing shown before login, a favicon,
no console errors, and no serious accessibility violation (axe-core, from
npm). Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from testkit import ARTIFACTS, ROOT
from tests.web.conftest import CHROMIUM
from tests.webservers import chromium_args

AXE = ROOT / "tests" / "web" / "axe" / "node_modules" / "axe-core" / "axe.min.js"

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args())
        yield browser
        browser.close()


def open_page(browser: Any, url: str, width: int, height: int) -> tuple[Any, list[str]]:
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url)
    return page, errors


def log_in(page: Any, key: str) -> None:
    page.fill("#key", key)
    page.click("#connect")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Live')", timeout=15_000)
    page.wait_for_function(
        "() => document.getElementById('figures-note').textContent.includes('Updated')", timeout=15_000
    )


def tile(page: Any, name: str) -> str:
    return page.inner_text(f'.tile[data-figure="{name}"] dd')


def test_the_first_screen_leads_with_the_figures_and_the_charts(web, browser, service) -> None:
    read_key, _ = service.access.create("read")
    page, errors = open_page(browser, web.url + "/", 1400, 900)
    # Before login: the form only, no empty chart cards.
    for hidden in ("#main", "#headline", "#rate-chart", "#figures-card"):
        assert not page.is_visible(hidden), hidden
    assert requests.get(web.url + "/favicon.ico", timeout=5).status_code == 200

    log_in(page, read_key)
    # Let the headline get a second poll (the "in" rate is a difference).
    page.wait_for_function(
        "() => !/…/.test(document.querySelector('.tile[data-figure=in] dd').textContent)", timeout=20_000
    )
    stats = requests.get(web.url + "/v1/stats", headers={"Authorization": f"Bearer {read_key}"}, timeout=5).json()
    alive = sum(1 for w in stats["workers"] if w["status"] == "alive")
    assert tile(page, "workers") == str(alive)
    assert tile(page, "depth") == f"{stats['queue']['length'] + stats['queue']['pending']:,}"
    assert tile(page, "memory").endswith(("KB", "MB", "GB"))
    for chart in ("#rate-chart", "#metric-chart"):
        box = page.locator(chart).bounding_box()
        assert box is not None and box["y"] + box["height"] <= 900, f"{chart} below the fold: {box}"
    # The system details: collapsed, humanized once opened.
    assert not page.is_visible("#figures")
    page.click("#system summary")
    details = page.inner_text("#figures")
    assert "[object Object]" not in details and "rss_bytes" not in details and " MB" in details
    page.screenshot(path=str(ARTIFACTS / "dashboard-1400x900.png"))

    page.evaluate(AXE.read_text())  # through DevTools: the page's CSP admits only its own scripts
    violations = page.evaluate("""async () => {
        const result = await axe.run(document, {resultTypes: ['violations']});
        return result.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                                .map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '));
    }""")
    assert violations == []
    assert errors == []


def test_the_dashboard_fits_a_phone(web, browser, service) -> None:
    read_key, _ = service.access.create("read")
    page, errors = open_page(browser, web.url + "/", 390, 844)
    log_in(page, read_key)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways ({width} px)"
    assert page.is_visible(".tile")
    page.screenshot(path=str(ARTIFACTS / "dashboard-390x844.png"), full_page=True)
    assert errors == []
