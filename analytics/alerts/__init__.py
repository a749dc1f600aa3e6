"""Alerts: rules over live detection's points (:mod:`~analytics.alerts.evaluate`),
kept in Redis (:mod:`~analytics.alerts.rules`), delivered to signed webhooks
(:mod:`~analytics.alerts.delivery`) and managed by :class:`~analytics.alerts.service.AlertService`."""
