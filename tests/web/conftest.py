"""Fixtures of the browser tests of the dashboard: a web server (gunicorn,
as the Procfile runs it) per test module, and a Chromium page."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webservers import WebServer, chromium_args

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def web(request: pytest.FixtureRequest, env: dict[str, str], tmp_root: Path, worker: Any) -> Iterator[WebServer]:
    """The module's own web server, served by the test run's Redis and worker."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    logs = tmp_root / f"{name}-logs"
    logs.mkdir(exist_ok=True)
    server = WebServer(f"web-{name}", env, logs).start()
    yield server
    server.stop()


@pytest.fixture
def page(web: WebServer) -> Iterator[Any]:
    """A headless Chromium page, whose script errors and refusals under the
    page's own Content-Security-Policy are kept in ``page.errors`` (a
    refused request is a console error of its own)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args())
        context = browser.new_context(viewport={"width": 1280, "height": 1100})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
        page.errors = errors
        yield page
        context.close()
        browser.close()
