"""CORS on the ingestion endpoints: listed origins only, preflights cached,
reads never shared with another origin, ``*`` never with credentials."""

from __future__ import annotations

import json
from typing import Any

import pytest

from analytics.errors import ConfigurationError
from analytics.settings import Settings
from web import create_app

ALLOWED = "https://app.example.org"


@pytest.fixture
def cors_client(env: dict[str, str]) -> Any:
    app = create_app({**env, "TESTING": True, "ANALYTICS_CORS_ORIGINS": f"{ALLOWED}/, https://other.example.org"})
    return app.test_client()


def preflight(client: Any, path: str, origin: str, method: str = "POST") -> Any:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type",
        },
    )


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/t", "/v1/events", "/batch/", "/e/", "/i/v0/e/"])
def test_preflight_from_an_allowed_origin(cors_client, path) -> None:
    response = preflight(cors_client, path, ALLOWED)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "GET" not in response.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    assert response.headers["Access-Control-Max-Age"] == "7200"
    assert "Origin" in response.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_preflight_from_another_origin_gets_no_cors_header(cors_client) -> None:
    response = preflight(cors_client, "/v1/batch", "https://evil.example.com")
    assert not [h for h in response.headers.keys() if h.startswith("Access-Control-")]


def test_reads_are_never_shared(cors_client, keys) -> None:
    assert "Access-Control-Allow-Origin" not in preflight(cors_client, "/v1/events", ALLOWED, "GET").headers
    response = cors_client.get("/v1/events", headers={**keys["read"], "Origin": ALLOWED})
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Origin" not in preflight(cors_client, "/v1/stats", ALLOWED, "GET").headers


def test_a_text_plain_post_from_an_allowed_origin(cors_client, keys) -> None:
    write_key = keys["ingest"]["Authorization"].split()[1]
    body = json.dumps({"writeKey": write_key, "event": "click", "anonymousId": "a-1"})
    response = cors_client.post("/v1/t", data=body, headers={"Origin": ALLOWED, "Content-Type": "text/plain"})
    assert response.status_code == 200, response.json
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"
    # Errors are readable too, so the page's SDK sees why.
    response = cors_client.post("/v1/t", data="{}", headers={"Origin": ALLOWED, "Content-Type": "text/plain"})
    assert response.status_code == 401 and response.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_no_origins_configured_no_headers(client) -> None:
    response = preflight(client, "/v1/batch", ALLOWED)
    assert "Access-Control-Allow-Origin" not in response.headers


def test_any_origin_and_credentials(env) -> None:
    app = create_app({**env, "TESTING": True, "ANALYTICS_CORS_ORIGINS": "*", "ANALYTICS_CORS_MAX_AGE": "60"})
    response = preflight(app.test_client(), "/v1/batch", "https://anywhere.example.net")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Max-Age"] == "60"
    app = create_app({**env, "TESTING": True, "ANALYTICS_CORS_ORIGINS": ALLOWED, "ANALYTICS_CORS_CREDENTIALS": "1"})
    response = preflight(app.test_client(), "/e/", ALLOWED)
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_any_origin_with_credentials_is_refused_at_start() -> None:
    with pytest.raises(ConfigurationError, match="ANALYTICS_CORS_ORIGINS=\\* cannot be combined"):
        Settings.from_env({"ANALYTICS_CORS_ORIGINS": "https://a.example.org,*", "ANALYTICS_CORS_CREDENTIALS": "true"})


def test_segment_settings_for_analytics_js(cors_client, keys) -> None:
    write_key = keys["ingest"]["Authorization"].split()[1]
    response = cors_client.get(f"/v1/projects/{write_key}/settings", headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    body = response.json
    assert list(body["integrations"]) == ["Segment.io"]
    segment_io = body["integrations"]["Segment.io"]
    assert segment_io["apiKey"] == write_key
    assert segment_io["apiHost"] == "localhost/v1" and segment_io["protocol"] == "http"
    assert body["analyticsNextEnabled"] is True and body["edgeFunction"] == {}
    assert body["remotePlugins"] == [] and body["metrics"]["sampleRate"] == 0
    assert cors_client.get("/v1/projects/ak_not_a_key/settings").status_code == 401
    read_key = keys["read"]["Authorization"].split()[1]
    assert cors_client.get(f"/v1/projects/{read_key}/settings").status_code == 403
