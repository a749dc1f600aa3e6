"""Request counts and durations: added up per process, exact in ``/metrics``."""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import REGISTRY

from testkit import in_forked_child, wait_until
from web.request_metrics import BUCKETS, RequestTally


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text (labels in any order)."""
    total = 0.0
    for match in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if found == labels:
            total += float(match.group(2))
    return total


def test_each_duration_lands_in_the_bucket_histogram_observe_would_choose() -> None:
    tally = RequestTally()
    endpoint = "test.buckets"
    durations = [0.0, 0.005, 0.0051, 0.3, 10.0, 11.0]  # on a bound, just above, past the last
    for seconds in durations:
        tally.add("GET", endpoint, 200, seconds)
    tally.add("GET", endpoint, 200, None)  # no start time: counted, not timed
    tally.flush()
    assert sample("analytics_http_requests_total", method="GET", endpoint=endpoint, status="200") == len(durations) + 1
    cumulative = {
        bound: sample(
            "analytics_http_request_duration_seconds_bucket",
            endpoint=endpoint,
            le=repr(float(bound)) if bound != float("inf") else "+Inf",
        )
        for bound in BUCKETS
    }
    assert cumulative[0.005] == 2 and cumulative[0.01] == 3 and cumulative[0.25] == 3
    assert cumulative[0.5] == 4 and cumulative[10.0] == 5 and cumulative[float("inf")] == 6
    assert sample("analytics_http_request_duration_seconds_count", endpoint=endpoint) == 6
    assert sample("analytics_http_request_duration_seconds_sum", endpoint=endpoint) == sum(durations)


def test_the_tally_reaches_prometheus_within_its_interval_without_a_scrape() -> None:
    tally = RequestTally(interval=0.1)
    tally.add("POST", "test.flusher", 202, 0.001)
    wait_until(
        lambda: sample("analytics_http_requests_total", method="POST", endpoint="test.flusher", status="202") == 1,
        5,
        0.05,
        "the flusher thread",
    )
    tally.flush()  # nothing left: counted once
    assert sample("analytics_http_requests_total", method="POST", endpoint="test.flusher", status="202") == 1


def test_metrics_count_every_request_served_until_the_scrape(client: Any, keys: Any) -> None:
    def counted() -> tuple[float, float, float]:
        text = client.get("/metrics").get_data(as_text=True)
        return (
            scraped(text, "analytics_http_requests_total", endpoint="api.post_events", method="POST", status="202"),
            scraped(text, "analytics_http_requests_total", endpoint="api.post_events", method="POST", status="401"),
            scraped(text, "analytics_http_request_duration_seconds_count", endpoint="api.post_events"),
        )

    before = counted()
    event = {"type": "page_view", "userId": "u-1"}
    for _ in range(5):
        assert client.post("/v1/events", json=event, headers=keys["ingest"]).status_code == 202
    assert client.post("/v1/events", json=event).status_code == 401
    after = counted()
    assert [a - b for a, b in zip(after, before, strict=True)] == [5, 1, 6]


def test_a_forked_child_does_not_flush_what_its_parent_counted() -> None:
    tally = RequestTally(interval=3600)  # only explicit flushes
    labels = {"method": "GET", "endpoint": "test.fork", "status": "200"}
    tally.add("GET", "test.fork", 200, 0.001)  # the parent's, not flushed yet

    def in_child() -> float:
        tally.add("GET", "test.fork", 200, 0.001)
        tally.flush()
        return sample("analytics_http_requests_total", **labels)

    assert float(in_forked_child(in_child)) == 1  # its own request only
    tally.flush()
    assert sample("analytics_http_requests_total", **labels) == 1  # the parent's, once
