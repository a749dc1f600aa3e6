"""Malformed bodies are the client's error: a clear JSON 400 that does not
echo the body, never a 500 (JSON nested deeper than the encoder takes, a
chunked body with a bad chunk size), on the test client and on gunicorn."""

from __future__ import annotations

import socket

import orjson
import pytest
import requests

from web.body import MAX_JSON_DEPTH

PATHS = ("/v1/events", "/v1/batch", "/v1/t")
SECRET = "nested-secret-7781"


def deep(depth: int, path: str = "/v1/events") -> bytes:
    """A body for ``path`` nested ``depth`` levels deep (the outer object is
    level 1), the nesting in an event's properties, a value at the bottom
    that must not come back. ``/v1/batch`` gets a Segment batch of one."""
    start = b'{"type":"click","anonymousId":"a","properties":'
    if path != "/v1/events":
        start = b'{"type":"track","event":"Clicked","anonymousId":"a","properties":'
    levels = depth - 2 if path == "/v1/batch" else depth
    inner = b'"' + SECRET.encode() + b'"'
    for _ in range(levels - 1):
        inner = b'{"n":' + inner + b"}"
    body = start + inner + b"}"
    return b'{"batch":[' + body + b"]}" if path == "/v1/batch" else body


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


@pytest.mark.parametrize("path", PATHS)
def test_deep_bodies_are_as_deep_as_said(path) -> None:
    for depth in (3, 10, 253):
        assert depth_of(orjson.loads(deep(depth, path))) == depth


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 253, 254, 255, 1023, 1024])
def test_deeply_nested_json_is_a_400(client, keys, path, depth) -> None:
    response = client.post(path, data=deep(depth, path), headers=keys["ingest"], content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    error = response.json["error"]
    assert error["code"] == "validation_error"
    assert SECRET not in response.get_data(as_text=True) and '{"n"' not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", PATHS)
def test_nesting_up_to_the_limit_reaches_the_schemas(client, keys, path) -> None:
    """At the body's limit the request gets as far as the schemas: their
    answer (a field error, or the event set aside), not the body's."""
    response = client.post(
        path, data=deep(MAX_JSON_DEPTH, path), headers=keys["ingest"], content_type="application/json"
    )
    assert response.status_code < 500
    assert "deeper than 64" not in response.get_data(as_text=True)
    assert SECRET not in response.get_data(as_text=True)


def raw_request(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def chunked(path: str, token: str, chunks: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode() + chunks


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\n" + SECRET.encode() + b"\r\n0\r\n\r\n",  # not hexadecimal
        b"5\r\n" + SECRET.encode() + b"\r\n0\r\n\r\n",  # longer than its size says
        b"-3\r\nabc\r\n0\r\n\r\n",  # negative
        b"ffffffffffffffffffff\r\n" + SECRET.encode() + b"\r\n0\r\n\r\n",  # absurdly large
    ],
    ids=["not-hex", "overlong", "negative", "huge"],
)
def test_a_bad_chunk_size_is_a_400_on_gunicorn(web_server, service, path, chunks) -> None:
    token, _ = service.access.create("ingest")
    status, headers, body = raw_request(web_server, chunked(path, token, chunks))
    assert status == 400, body[:300]
    assert SECRET.encode() not in body
    if headers.get("content-type", "").startswith("application/json"):
        assert b'"code"' in body


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("depth", [253, 1023])
def test_deeply_nested_json_is_a_400_on_gunicorn(web_server, service, path, depth) -> None:
    token, _ = service.access.create("ingest")
    response = requests.post(
        web_server + path,
        data=deep(depth, path),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == "validation_error"
    assert SECRET not in response.text


def test_a_good_chunked_body_is_still_accepted_on_gunicorn(web_server, service) -> None:
    token, _ = service.access.create("ingest")
    body = b'{"type":"click","anonymousId":"a"}'
    chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    status, _, answer = raw_request(web_server, chunked("/v1/events", token, chunks))
    assert status == 202, answer


def test_every_api_answer_says_no_store(client, keys) -> None:
    """Answers that may carry event data are kept by no cache: every
    ``/v1`` answer, errors and the stream's refusal included."""
    answers = [
        client.post("/v1/events", json={"type": "click", "anonymousId": "a"}, headers=keys["ingest"]),
        client.get("/v1/events", headers=keys["read"]),
        client.get("/v1/events"),  # 401
        client.get("/v1/events?limit=nope", headers=keys["read"]),  # 400
        client.get("/v1/stats", headers=keys["admin"]),
        client.get("/v1/event-types", headers=keys["read"]),
        client.get("/v1/no-such-thing", headers=keys["read"]),  # 404
        client.post("/v1/events", data=deep(300), headers=keys["ingest"], content_type="application/json"),
        client.get("/v1/stream"),  # no key: refused before any upgrade
    ]
    for response in answers:
        assert response.headers.get("Cache-Control") == "no-store", (response.request.path, response.status)
    assert answers[0].status_code == 202 and answers[1].status_code == 200 and answers[2].status_code == 401
