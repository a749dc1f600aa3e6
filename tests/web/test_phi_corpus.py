"""Privacy by default, over a corpus of over 1,000 realistic messages full of
identifiers (:mod:`tests.phi_corpus`), sent through the native API,
``/v1/batch`` and the real Segment SDK: afterwards no identifier is found in
clear in any Redis key name or value (``SCAN`` + ``DUMP`` and typed reads of
every database, the broker's included), in the AOF, in any process log or in
any response the senders got."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from segment.analytics import Client

from testkit import stored_events, wait_until
from tests.phi_corpus import Corpus, build
from tests.web.test_phi_leaks import aof_bytes, dump_everything

SERVICE_LOGGERS = {"analytics", "web", "tasks", "cli", "celery", "gunicorn", "werkzeug"}
#: A value of a field declared clear: it must be stored in clear (a check that
#: the scan sees clear text at all).
CLEAR_VALUE = "gold"


def leaked(blob: bytes, corpus: Corpus) -> list[str]:
    """The identifiers of ``corpus`` found in ``blob``, as bytes or inside
    base64 text at any alignment (Celery bodies are base64)."""
    found = []
    for value in corpus.identifiers:
        raw = value.encode()
        variants = [raw] + [base64.b64encode(b"x" * pad + raw)[4 if pad else 0 : -4] for pad in range(3)]
        if any(len(v) >= 8 and v in blob for v in variants):
            found.append(value)
    return sorted(found)


@pytest.mark.slow
def test_a_corpus_of_identifiers_is_nowhere_in_clear(web_server, worker, keys, data, redis_server, tmp_root, caplog):
    corpus = build()
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port, single_connection_client=True)
    raw.config_set("rdbcompression", "no")  # DUMP's LZF could hide a clear value from the scan
    responses: list[bytes] = []
    ingest = keys["ingest"]
    try:
        with caplog.at_level(logging.DEBUG):
            # One type declares a clear field: its values are stored in clear,
            # unless they look like identifiers (then sealed anyway).
            declared = requests.post(
                f"{web_server}/v1/event-types",
                headers=keys["admin"],
                json={"name": "checkout", "priority": "normal", "clear": ["properties.plan"]},
                timeout=10,
            )
            assert declared.status_code in (200, 201), declared.text
            checkout = [
                {"type": "checkout", "userId": f"buyer-{i}", "properties": {"plan": CLEAR_VALUE if i % 2 else email}}
                for i, email in enumerate(sorted(v for v in corpus.identifiers if "@" in v)[:40])
            ]
            accepted = 0
            batches = [corpus.events[k : k + 100] for k in range(0, len(corpus.events), 100)] + [checkout]
            for batch in batches:
                reply = requests.post(f"{web_server}/v1/events", headers=ingest, json={"batch": batch}, timeout=30)
                assert reply.status_code == 202, reply.text
                accepted += reply.json()["accepted"]
                responses.append(reply.content)
            for k in range(0, len(corpus.segment), 50):
                reply = requests.post(
                    f"{web_server}/v1/batch", headers=ingest, json={"batch": corpus.segment[k : k + 50]}, timeout=30
                )
                assert reply.status_code == 200, reply.text
                responses.append(reply.content)
            sdk_errors: list[Any] = []
            client = Client(
                ingest["Authorization"].split()[1],
                host=web_server,
                upload_size=25,
                max_retries=1,
                on_error=lambda error, batch: sdk_errors.append(error),
            )
            try:
                for message in corpus.sdk_calls:
                    send(client, message)
                client.flush()
            finally:
                client.shutdown()
            assert sdk_errors == []
            for sample in corpus.bad_samples:
                reply = requests.post(f"{web_server}/v1/metrics", headers=ingest, json=sample, timeout=10)
                assert reply.status_code == 400, reply.text  # a tag value that looks like an identifier
                assert "tags" in reply.text
                responses.append(reply.content)
            reply = requests.post(
                f"{web_server}/v1/metrics", headers=ingest, json={"batch": corpus.good_samples}, timeout=10
            )
            assert reply.status_code == 202 and reply.json()["accepted"] == len(corpus.good_samples), reply.text

        expected = accepted + len(corpus.segment) + len(corpus.sdk_calls)
        wait_until(lambda: stored_events(data) >= expected, 90, message=f"{expected} events stored")

        for body in responses:
            assert leaked(body, corpus) == []
        blob, count = dump_everything(raw)
        assert count > 50 and CLEAR_VALUE.encode() in blob
        assert leaked(blob, corpus) == []
        raw.execute_command("SELECT", 0)
        raw.execute_command("BGREWRITEAOF")  # what was rewritten and what was appended: both on disk
        wait_until(lambda: raw.info("persistence")["aof_rewrite_in_progress"] == 0, 30, message="the AOF rewrite")
        aof = aof_bytes(Path(redis_server.dir))
        assert leaked(aof, corpus) == []
    finally:
        raw.config_set("rdbcompression", "yes")
        raw.close()
    # The service's logs: every process's file, and what the service's own
    # loggers said in this process (the SDK's debug log of what it sends is
    # the client's, not ours).
    logs = b"".join(p.read_bytes() for p in (tmp_root / "session-logs").glob("*.log"))
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in SERVICE_LOGGERS)
    assert leaked(logs + ours.encode(), corpus) == []


def send(client: Client, message: dict[str, Any]) -> None:
    """A corpus message through the SDK's own call for its type."""
    kind, user = message["type"], message["userId"]
    context, message_id = message.get("context"), message.get("messageId")
    if kind == "track":
        client.track(
            user_id=user,
            event=message["event"],
            properties=message.get("properties"),
            context=context,
            message_id=message_id,
        )
    elif kind == "identify":
        client.identify(user_id=user, traits=message["traits"], context=context, message_id=message_id)
    elif kind == "page":
        client.page(
            user_id=user,
            category=message["category"],
            name=message["name"],
            properties=message["properties"],
            context=context,
            message_id=message_id,
        )
    elif kind == "group":
        client.group(
            user_id=user, group_id=message["groupId"], traits=message["traits"], context=context, message_id=message_id
        )
    else:
        client.screen(user_id=user, name=message["name"], context=context, message_id=message_id)
