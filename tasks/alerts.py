"""Alert delivery: send the outbox's notifications to their webhooks.

Queued by live detection when an advance wrote notifications, and by beat
every ``ANALYTICS_RECOVERY_INTERVAL`` (retries whose wait is over, entries a
dead worker held). Attempts, back-off and the dead letter are counted in
Redis by :class:`analytics.alerts.delivery.AlertDelivery`, not by Celery: a
failing webhook is not a failed task, and the task itself is retried only
when Redis is away (the project's task decorator).
"""

from __future__ import annotations

from typing import Any

from tasks.base import analytics, task
from tasks.celery_app import DELIVER_ALERTS


@task(DELIVER_ALERTS)
def deliver_alerts() -> dict[str, Any]:
    """Deliver the alert notifications that are due."""
    report = analytics().alerts.deliver()
    return {"delivered": report.delivered, "failed": report.failed, "dead": report.dead, "dropped": report.dropped}
