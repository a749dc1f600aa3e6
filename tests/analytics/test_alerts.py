"""Alert rules: the evaluation (pure: rules and points in, state and
notifications out), the rule wire shape, and the signature scheme."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import marshmallow
import orjson
import pytest

from analytics.alerts.evaluate import WARM_POINTS, AlertEvaluator
from analytics.alerts.rules import Rule
from analytics.alerts.schemas import RuleSchema, mask_url
from analytics.anomaly.detector import Score
from analytics.anomaly.live import Point
from analytics.privacy.crypto import webhook_signature

#: Every field a notification may have: names, tags, numbers and a link.
NOTICE_FIELDS = {
    "kind",
    "rule",
    "state",
    "name",
    "tags",
    "condition",
    "since",
    "bucket",
    "resolution",
    "value",
    "score",
    "expected",
    "lower",
    "upper",
    "link",
}

RES = 10
T0 = 1_700_000_000 - 1_700_000_000 % RES


class Rules:
    """A rule source holding a fixed list (what the cache hands out)."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = list(rules)

    def for_metric(self, name: str) -> list[Rule]:
        return [r for r in self.rules if r.metric == name]


def rule(condition: str = "above", value: float | None = 50.0, **kw: Any) -> Rule:
    fields: dict[str, Any] = {
        "id": "al_test",
        "metric": "api.latency",
        "tags": {},
        "condition": condition,
        "value": value,
        "for_duration": 0,
        "cooldown": 3600,
        "webhook": "https://hooks.example.org/x?token=t",
    }
    fields.update(kw)
    return Rule(**fields)


def points(values: list[float | None], start: int = 0, alert_at: tuple[int, ...] = ()) -> list[Point]:
    """One point per bucket from bucket ``start``; None: no point (a gap)."""
    out = []
    for i, value in enumerate(values):
        if value is None:
            continue
        score = Score(0.9 if i in alert_at else 0.0, 20.0, 15.0, 25.0, alert=i in alert_at)
        out.append(Point(T0 + (start + i) * RES, float(value), score))
    return out


class Run:
    """Feeds points through an evaluator in advances, keeping the state as
    the detector hash would."""

    def __init__(self, *rules: Rule, tags: dict[str, str] | None = None) -> None:
        self.evaluator = AlertEvaluator(Rules(*rules), RES)
        self.state: bytes | None = None
        self.tags = tags or {}

    def feed(self, pts: list[Point], name: str = "api.latency") -> list[dict[str, Any]]:
        outcome = self.evaluator.evaluate(name, "sid", self.tags, pts, self.state)
        if outcome.state is not None:
            self.state = outcome.state
        return outcome.notices


def test_a_threshold_fires_once_per_episode_and_resolves() -> None:
    run = Run(rule())
    notices = run.feed(points([10, 60, 70, 80, 10, 10]))
    assert [(n["state"], n["bucket"]) for n in notices] == [("firing", T0 + RES), ("resolved", T0 + 4 * RES)]
    firing = notices[0]
    assert firing["value"] == 60.0 and firing["condition"] == {"type": "above", "value": 50.0}
    assert firing["since"] == T0 + RES and firing["name"] == "api.latency" and firing["rule"] == "al_test"
    assert firing["link"].startswith("/v1/metrics/api.latency?start=")


def test_the_same_points_in_several_advances_give_the_same_notices() -> None:
    pts = points([10, 60, 70, 80, 10, 10])
    whole = Run(rule()).feed(pts)
    split = Run(rule())
    assert [n for i in range(len(pts)) for n in split.feed(pts[i : i + 1])] == whole


def test_for_duration_needs_the_condition_through_whole_buckets() -> None:
    run = Run(rule(for_duration=30))
    # Holds for two buckets (20 s), stops, then holds for three (30 s).
    notices = run.feed(points([60, 60, 10, 60, 60, 60, 60]))
    assert [(n["state"], n["bucket"], n["since"]) for n in notices] == [("firing", T0 + 5 * RES, T0 + 3 * RES)]


def test_a_gap_in_the_data_restarts_the_duration() -> None:
    run = Run(rule(for_duration=30))
    assert run.feed(points([60, 60, None, 60, 60])) == []
    assert [n["bucket"] for n in run.feed(points([60], start=5))] == [T0 + 5 * RES]


def test_the_cooldown_holds_back_a_second_firing() -> None:
    run = Run(rule(cooldown=100))
    notices = run.feed(points([60, 10, 60, 60, 10, 60]))  # second episode 20 s after the first firing
    assert [n["state"] for n in notices] == ["firing", "resolved"]
    # Still holding once the cool-down is over: it fires then, once.
    later = run.feed(points([60, 60, 60, 60, 60, 60], start=6))
    assert [(n["state"], n["bucket"]) for n in later] == [("firing", T0 + 10 * RES)]


def test_anomalous_fires_per_anomaly_without_resolved_notices() -> None:
    run = Run(rule("anomalous", None, cooldown=0))
    notices = run.feed(points([20] * 10, alert_at=(2, 7)))
    assert [(n["state"], n["bucket"]) for n in notices] == [("firing", T0 + 2 * RES), ("firing", T0 + 7 * RES)]
    assert notices[0]["score"] == 0.9 and notices[0]["lower"] == 15.0 and notices[0]["upper"] == 25.0


def test_outside_band_waits_for_the_learning_period() -> None:
    run = Run(rule("outside_band", None, cooldown=0))
    assert run.feed(points([30.0] * 5)) == []  # outside [15, 25], but the band is not learned yet
    run.feed(points([20.0] * (WARM_POINTS - 5), start=5))
    notices = run.feed(points([20.0, 30.0, 20.0, 10.0], start=WARM_POINTS))
    assert [n["state"] for n in notices] == ["firing", "resolved", "firing"]


def test_tag_filters_and_metric_names_select_the_series() -> None:
    on_login = rule(tags={"route": "/login"})
    assert Run(on_login, tags={"route": "/login", "region": "eu"}).feed(points([60]))
    assert Run(on_login, tags={"route": "/home"}).feed(points([60])) == []
    assert Run(on_login).feed(points([60])) == []
    assert Run(rule()).feed(points([60]), name="api.other") == []


def test_a_deleted_rule_leaves_the_state_and_an_unchanged_state_is_not_rewritten() -> None:
    rules = Rules(rule(), rule(id="al_other", value=65.0))
    evaluator = AlertEvaluator(rules, RES)
    outcome = evaluator.evaluate("api.latency", "sid", {}, points([70]), None)
    assert len(outcome.notices) == 2 and outcome.state is not None
    assert set(orjson.loads(outcome.state)["r"]) == {"al_test", "al_other"}
    rules.rules.pop()
    after = evaluator.evaluate("api.latency", "sid", {}, points([70], start=1), outcome.state)
    assert set(orjson.loads(after.state or b"{}")["r"]) == {"al_test"} and after.notices == []


def test_notices_hold_names_tags_numbers_and_a_link_only() -> None:
    run = Run(rule(tags={"route": "/login"}), tags={"route": "/login"})
    (notice,) = run.feed(points([60]))
    assert set(notice) == NOTICE_FIELDS - {"kind"}  # "kind" is added when it is written
    assert "hooks.example.org" not in orjson.dumps(notice).decode()  # the webhook is never in a notice
    assert notice["link"] == f"/v1/metrics/api.latency?start={T0}&end={T0 + RES}&bucket=10&tags=route:/login"


# -- the wire shape ---------------------------------------------------------
SCHEMA = RuleSchema(frozenset({"email"}))


def test_a_rule_loads_with_defaults() -> None:
    loaded = SCHEMA.load(
        {"metric": "events.login", "condition": {"type": "anomalous"}, "webhook": "http://127.0.0.1:9/h"}
    )
    assert (loaded.metric, loaded.condition, loaded.for_duration, loaded.cooldown) == (
        "events.login",
        "anomalous",
        0,
        3600,
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"condition": {"type": "anomalous"}, "webhook": "https://h.example.org/"}, "metric"),
        ({"metric": "a:b", "condition": {"type": "anomalous"}, "webhook": "https://h.example.org/"}, "metric"),
        ({"metric": "x", "condition": {"type": "above"}, "webhook": "https://h.example.org/"}, "condition"),
        (
            {"metric": "x", "condition": {"type": "anomalous", "value": 1}, "webhook": "https://h.example.org/"},
            "condition",
        ),
        ({"metric": "x", "condition": {"type": "sideways"}, "webhook": "https://h.example.org/"}, "condition"),
        (
            {"metric": "x", "condition": {"type": "above", "value": "1"}, "webhook": "https://h.example.org/"},
            "condition",
        ),
        ({"metric": "x", "condition": {"type": "anomalous"}, "webhook": "ftp://h.example.org/"}, "webhook"),
        ({"metric": "x", "condition": {"type": "anomalous"}, "webhook": "not a url"}, "webhook"),
        ({"metric": "x", "condition": {"type": "anomalous"}, "webhook": "https://h/", "cooldown": -1}, "cooldown"),
        (
            {"metric": "x", "condition": {"type": "anomalous"}, "webhook": "https://h/", "forDuration": "9"},
            "forDuration",
        ),
        ({"metric": "x", "condition": {"type": "anomalous"}, "webhook": "https://h/", "tags": {"email": "a"}}, "tags"),
        ({"metric": "x", "condition": {"type": "anomalous"}, "webhook": "https://h/", "name": "Jane"}, "name"),
        (
            {"metric": "events.login", "condition": {"type": "anomalous"}, "webhook": "https://h/", "tags": {"a": "b"}},
            "tags",
        ),
    ],
)
def test_invalid_rules_are_refused_by_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(marshmallow.ValidationError) as caught:
        SCHEMA.load(body)
    assert field in caught.value.messages


def test_webhooks_are_masked_to_scheme_and_host() -> None:
    assert mask_url("https://u:p@hooks.example.org:8443/T0k3n?sig=s") == "https://hooks.example.org:8443/..."


def test_the_signature_is_an_hmac_of_timestamp_dot_body() -> None:
    body = b'{"kind":"alert"}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhook_signature("s3cret", 1700000000, body) == expected


# -- the HTTP API -------------------------------------------------------------
RULE = {"metric": "api.latency", "condition": {"type": "above", "value": 800}, "webhook": "https://h.example.org/T0k"}


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"metric": "api.latency"}',
        orjson.dumps({**RULE, "tags": {"route": ["/a"]}}),
        orjson.dumps({**RULE, "webhook": "javascript:alert(1)"}),
        orjson.dumps({**RULE, "tags": {"patient": "jane.doe@example.org"}}),
    ],
)
def test_bad_rules_get_a_400_naming_fields_only(client: Any, keys: dict[str, Any], body: bytes) -> None:
    response = client.post("/v1/alerts", data=body, headers={**keys["admin"], "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] in ("validation_error", "bad_request")
    assert b"jane.doe" not in response.data and b"javascript" not in response.data


def test_roles_rule_the_alerts_api(client: Any, keys: dict[str, Any], service: Any) -> None:
    assert client.post("/v1/alerts", json=RULE, headers=keys["read"]).status_code == 403
    assert client.post("/v1/alerts", json=RULE).status_code == 401
    created = client.post("/v1/alerts", json=RULE, headers=keys["admin"])
    assert created.status_code == 201
    rule = created.get_json()
    assert rule["webhook"] == "https://h.example.org/..." and rule["condition"] == {"type": "above", "value": 800.0}
    assert client.get(f"/v1/alerts/{rule['id']}", headers=keys["read"]).get_json() == rule
    assert client.delete(f"/v1/alerts/{rule['id']}", headers=keys["read"]).status_code == 403
    assert client.delete(f"/v1/alerts/{rule['id']}", headers=keys["admin"]).status_code == 204
    assert client.delete(f"/v1/alerts/{rule['id']}", headers=keys["admin"]).status_code == 404
    assert client.get("/v1/alerts", headers=keys["read"]).get_json() == {"rules": []}
    actions = [(e["action"], e.get("rule")) for e in service.audit.entries() if e["action"].startswith("alert.")]
    assert actions == [("alert.rule.create", rule["id"]), ("alert.rule.delete", rule["id"])]
