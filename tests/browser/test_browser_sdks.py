"""The browser SDKs, unchanged, in headless Chromium: Segment's analytics.js
(``@segment/analytics-next``) and posthog-js, from npm (tests/browser/
package.json), bundled locally by esbuild, loaded by a page of another
origin (a tiny local HTTP server) that the service allows by
``ANALYTICS_CORS_ORIGINS``. Their calls arrive and are stored; nothing is
fetched from anywhere but the two local servers."""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import sync_playwright

from testkit import free_port, stored_events, wait_until
from tests.webservers import WebServer, chromium_args

HERE = Path(__file__).parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NPM is None or shutil.which("node") is None, reason="node and npm are needed to bundle the browser SDKs"
)

PAGE = "<!doctype html><html><head><title>{name}</title><script src='{name}.js'></script></head><body></body></html>"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SDKs bundled (esbuild) with the page that loads each, in a folder."""
    if not (HERE / "node_modules").is_dir():
        assert NPM is not None
        subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--silent"], cwd=HERE, check=True, timeout=600)
    out = tmp_path_factory.mktemp("pages")
    for name in ("segment", "posthog"):
        subprocess.run(
            [
                str(HERE / "node_modules" / ".bin" / "esbuild"),
                f"src/{name}.js",
                "--bundle",
                "--format=iife",
                f"--outfile={out / name}.js",
                "--log-level=warning",
            ],
            cwd=HERE,
            check=True,
            timeout=120,
        )
        (out / f"{name}.html").write_text(PAGE.format(name=name))
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin(bundles: Path) -> Iterator[str]:
    """A tiny HTTP server for the pages: another origin than the service's."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()), functools.partial(_Quiet, directory=str(bundles))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def cors_server(env: dict[str, str], page_origin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The web process (gunicorn) allowing the pages' origin."""
    server = WebServer(
        "gunicorn-browser",
        {**env, "ANALYTICS_CORS_ORIGINS": page_origin},
        tmp_path_factory.mktemp("browser-logs"),
        threads=8,
    ).start()
    yield server.url
    server.stop()


def run_page(page_origin: str, name: str, script: str, *args: Any) -> tuple[Any, list[str]]:
    """Open the page, run ``script`` (a function of the page) with ``args``;
    returns its result and every URL the page requested."""
    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args())
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{page_origin}/{name}.html")
            result = page.evaluate(script, list(args))
            if name == "posthog":
                # Sent at once (request_batching off), but asynchronously.
                page.wait_for_timeout(500)
        finally:
            browser.close()
    return result, requested


def events(url: str, keys: dict[str, Any], event_type: str) -> list[dict[str, Any]]:
    response = requests.get(
        f"{url}/v1/events", params={"type": event_type, "limit": "1000"}, headers=keys["read"], timeout=10
    )
    return list(response.json()["events"]) if response.status_code == 200 else []


def named(url: str, keys: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """A track name the registry did not know: its own type, or ``custom``."""
    own = events(url, keys, name)
    return own or [e for e in events(url, keys, "custom") if e.get("metadata", {}).get("event") == name]


def only_local(requested: list[str], *origins: str) -> None:
    hosts = {urlsplit(origin).netloc for origin in origins}
    strangers = [url for url in requested if urlsplit(url).netloc not in hosts]
    assert strangers == [], "the page fetched from elsewhere"


@pytest.mark.parametrize("batching", [False, True], ids=["one-by-one", "batching"])
def test_analytics_js(cors_server, page_origin, worker, keys, data, batching) -> None:
    write_key = keys["ingest"]["Authorization"].split()[1]
    script = "([key, host, batching]) => window.runSegment(key, host, batching)"
    results, requested = run_page(page_origin, "segment", script, write_key, cors_server, batching)
    assert results == ["delivered"] * 3
    only_local(requested, page_origin, cors_server)
    assert f"{cors_server}/v1/projects/{write_key}/settings" in requested
    paths = {urlsplit(url).path for url in requested if url.startswith(cors_server)}
    assert paths >= ({"/v1/b"} if batching else {"/v1/i", "/v1/t", "/v1/p"})
    wait_until(lambda: stored_events(data) == 3, 30, message="the worker to store 3 events")
    [identify] = events(cors_server, keys, "identify")
    assert identify["userId"] == "u-1" and identify["traits"] == {"plan": "pro", "email": "u1@example.org"}
    [order] = named(cors_server, keys, "Order Completed")
    assert order["userId"] == "u-1" and order["properties"]["amount"] == 42
    assert order["context"]["library"]["name"] == "analytics.js"
    [page] = events(cors_server, keys, "page")
    assert page["properties"]["path"] == "/docs" and page["metadata"]["category"] == "Docs"
    assert "sentAt" in page  # the browser's clock is corrected by it


def test_posthog_js(cors_server, page_origin, worker, keys, data) -> None:
    token = keys["ingest"]["Authorization"].split()[1]
    script = "([token, host]) => window.runPosthog(token, host)"
    distinct_id, requested = run_page(page_origin, "posthog", script, token, cors_server)
    assert distinct_id == "u-2"
    only_local(requested, page_origin, cors_server)
    wait_until(lambda: stored_events(data) == 4, 30, message="the worker to store the 4 events of the page")
    [viewed] = named(cors_server, keys, "Viewed Pricing")
    anonymous = viewed["anonymousId"]
    assert anonymous and viewed.get("userId") is None  # before identify()
    [identify] = events(cors_server, keys, "identify")
    assert identify["userId"] == "u-2" and identify["traits"]["plan"] == "pro"
    assert identify["anonymousId"] == anonymous  # links the visitor's earlier events
    [order] = named(cors_server, keys, "Order Completed")
    assert order["userId"] == "u-2" and order["properties"]["amount"] == 7
    [pageview] = events(cors_server, keys, "page_view")
    assert pageview["userId"] == "u-2"
    assert pageview["properties"]["$current_url"] == f"{page_origin}/posthog.html"
    assert all("token" not in e["properties"] for e in (viewed, pageview, identify, order))
