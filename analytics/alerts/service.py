"""Alerts as a service: rules created, listed and deleted (audited), and
the delivery of their notifications (:mod:`analytics.alerts.delivery`).

A rule's webhook URL is shown masked (scheme and host) whenever a rule is
listed or read back: it may hold the receiver's token. The full URL is
kept in Redis and used only to deliver.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import marshmallow

from analytics.alerts.delivery import AlertDelivery, DeliveryReport
from analytics.alerts.rules import Rule, RuleStore, new_rule_id
from analytics.alerts.schemas import RuleSchema, mask_url
from analytics.errors import NotFound, ValidationError
from analytics.privacy.auditor import Auditor

__all__ = ["AlertService", "describe"]

#: Rules one installation holds at most (each is matched on every advance of its metric).
MAX_RULES = 1000


def describe(rule: Rule) -> dict[str, Any]:
    """A rule as the API shows it (the wire shape, the webhook masked)."""
    condition: dict[str, Any] = {"type": rule.condition}
    if rule.value is not None:
        condition["value"] = rule.value
    return {
        "id": rule.id,
        "metric": rule.metric,
        "tags": dict(rule.tags),
        "condition": condition,
        "forDuration": rule.for_duration,
        "cooldown": rule.cooldown,
        "webhook": mask_url(rule.webhook),
        "created": rule.created,
    }


class AlertService:
    def __init__(
        self, rules: RuleStore, auditor: Auditor, delivery: AlertDelivery, phi_fields: frozenset[str] = frozenset()
    ) -> None:
        self.rules = rules
        self.delivery = delivery
        self._auditor = auditor
        self._schema = RuleSchema(phi_fields)

    def create(self, data: Any, actor: str = "system", remote: str | None = None) -> dict[str, Any]:
        """A new rule from its wire shape (validated here); audited as ``alert.rule.create``."""
        try:
            loaded: Rule = self._schema.load(data)
        except marshmallow.ValidationError as exc:
            raise ValidationError("invalid alert rule", exc.normalized_messages()) from None
        if self.rules.count() >= MAX_RULES:
            raise ValidationError("too many alert rules", {"_schema": [f"At most {MAX_RULES} rules."]})
        rule = replace(loaded, id=new_rule_id(), created=round(time.time(), 3))
        self.rules.add(rule)
        # Tag values stay out of the audit log (a tag may be an id): the
        # rule id leads to them.
        self._auditor.record(
            "alert.rule.create",
            actor,
            remote,
            rule=rule.id,
            metric=rule.metric,
            tagKeys=sorted(rule.tags),
            condition=rule.condition,
            forDuration=rule.for_duration,
            cooldown=rule.cooldown,
        )
        return describe(rule)

    def list(self) -> list[dict[str, Any]]:
        return [describe(rule) for rule in self.rules.all()]

    def get(self, rule_id: str) -> dict[str, Any]:
        rule = self.rules.get(rule_id)
        if rule is None:
            raise NotFound("no such alert rule")
        return describe(rule)

    def delete(self, rule_id: str, actor: str = "system", remote: str | None = None) -> None:
        """Delete a rule (its pending notifications are dropped); audited."""
        if not self.rules.remove(rule_id):
            raise NotFound("no such alert rule")
        self._auditor.record("alert.rule.delete", actor, remote, rule=rule_id)

    def deliver(self, consumer: str | None = None) -> DeliveryReport:
        """Send the notifications that are due (what the delivery task runs)."""
        return self.delivery.run(consumer)
