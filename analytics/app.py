"""The composition root: :class:`Analytics` builds every domain service
from :class:`Settings` and hands each its few collaborators. It holds no
logic of its own; the faces (web, tasks, cli) and users of the Python API
reach the services through it::

    from analytics import Analytics

    app = Analytics.create()               # settings from the environment
    app.events.track({"type": "login", "userId": "u-17"})
    app.processor.drain()                  # what a Celery worker runs
    events, cursor = app.events.get_events({"type": "login"})

Build one per process and share it: it owns no threads and no global state.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from analytics import keyspace
from analytics.alerts.delivery import AlertDelivery
from analytics.alerts.evaluate import AlertEvaluator
from analytics.alerts.rules import RuleStore
from analytics.alerts.service import AlertService
from analytics.anomaly.live import LiveDetection
from analytics.events.codec import RecordCodec
from analytics.events.commit import Committer
from analytics.events.registry import EventTypeRegistry
from analytics.events.segment import SegmentIngest
from analytics.events.service import EventService
from analytics.events.store import EventStore
from analytics.metrics.commit import MetricCommitter
from analytics.metrics.service import MetricService
from analytics.metrics.store import MetricStore
from analytics.ops.replay import ReplayPlanner
from analytics.ops.retention import Cleanup
from analytics.ops.service import OpsService
from analytics.ops.stats import Stats
from analytics.pipeline.admission import Admitter
from analytics.pipeline.deadletters import DeadLetters
from analytics.pipeline.intake import KICK_TTL_MS, Intake, Kick
from analytics.pipeline.queue import EventQueue
from analytics.privacy.access import AccessService
from analytics.privacy.apikeys import ApiKeyStore
from analytics.privacy.audit import AuditLog
from analytics.privacy.auditor import Auditor
from analytics.privacy.checkpoints import CheckpointFile
from analytics.privacy.crypto import Vault
from analytics.privacy.erasure import Eraser
from analytics.privacy.fingerprints import KeyFingerprints
from analytics.privacy.phi import PhiPolicy
from analytics.privacy.ratelimit import RateLimiter
from analytics.privacy.screening import ScreenedCounter
from analytics.privacy.service import PrivacyService
from analytics.processing.service import Processor
from analytics.redis_client import connect
from analytics.settings import Settings


class Analytics:
    """The service's Python API: one attribute per domain service.

    * :attr:`events` (:class:`EventService`): ingest, queries, event types;
    * :attr:`metrics` (:class:`MetricService`): samples and rollup queries;
    * :attr:`segment` (:class:`SegmentIngest`): Segment-compatible ingest;
    * :attr:`access` (:class:`AccessService`): API keys;
    * :attr:`privacy` (:class:`PrivacyService`): audit, erasure, rotation;
    * :attr:`processor` (:class:`Processor`): draining and recovery;
    * :attr:`ops` (:class:`OpsService`): figures, cleanup, dead letters;
    * :attr:`intake` (:class:`Intake`): the queue's front door;
    * :attr:`detection` (:class:`LiveDetection`): live anomaly detection;
    * :attr:`alerts` (:class:`AlertService`): alert rules and their delivery.

    The stores and codecs they share are attributes too, for tools and
    tests that work below the services.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        *,
        kick: Kick | None = None,
        vault: Vault | None = None,
        notify: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.vault = vault or Vault.from_settings(settings)
        self.registry = EventTypeRegistry(client, settings)
        self.screened = ScreenedCounter(client)
        self.policy = PhiPolicy(settings.phi_fields, self.registry.clear_tree, self.screened.add)
        self.codec = RecordCodec(self.vault, self.policy, settings.max_clock_skew_seconds * 1000)
        self.queue = EventQueue(client)
        self.metrics_queue = EventQueue(client, lanes=(keyspace.METRICS_QUEUE,), packed=False)
        self.metric_store = MetricStore(client, settings)
        self.store = EventStore(client)
        self.store.metric_args = self.metric_store.event_metric_args()
        self.api_keys = ApiKeyStore(client)
        self.audit = AuditLog(client, self.vault, CheckpointFile.from_settings(settings, self.vault))
        # Development mode's well-known key is not fingerprinted.
        self.fingerprints = KeyFingerprints(client, self.vault, enabled=bool(settings.encryption_keys))
        self.auditor = Auditor(client, self.audit, self.vault, self.policy, settings.auth_failure_window)
        self.dead_letters = DeadLetters(client, self.vault)
        self.stats = Stats(client)
        rate_limiter = RateLimiter(client, settings.rate_limit, settings.rate_burst)

        self.access = AccessService(self.api_keys, rate_limiter, self.auditor, self.vault, notices=client)
        self.admitter = Admitter(
            client,
            rate_limiter,
            KICK_TTL_MS,
            settings.redis_max_connections,
            min_replicas=settings.min_replicas,
            replica_timeout_ms=settings.replica_timeout_ms,
        )
        self.intake = Intake(client, self.admitter, self.access, kick)
        self.events = EventService(
            settings,
            self.codec,
            self.registry,
            self.queue,
            self.store,
            self.intake,
            self.auditor,
            self.stats.record_unreadable,
        )
        self.alert_rules = RuleStore(client, settings.alert_rules_ttl)
        signing = settings.alert_signing_key or self.vault.derived_alert_secret
        self.alert_delivery = AlertDelivery(client, self.alert_rules, self.auditor, settings, signing)
        self.alerts = AlertService(self.alert_rules, self.auditor, self.alert_delivery, self.policy.names)
        self.detection = LiveDetection(
            client,
            self.metric_store,
            settings,
            (self.queue, self.metrics_queue),
            alerts=AlertEvaluator(self.alert_rules, settings.anomaly_resolution),
            notify=notify,
        )
        self.metrics = MetricService(
            settings, self.metric_store, self.metrics_queue, self.intake, self.events, self.policy.names, self.detection
        )
        self.segment = SegmentIngest(settings, client, self.events, self.intake, self.dead_letters)
        self.eraser = Eraser(client, self.api_keys, self.store)
        self.privacy = PrivacyService(client, self.vault, self.auditor, self.audit, self.eraser)
        self.committer = Committer(self.store, self.vault, settings.max_attempts)
        self.metric_committer = MetricCommitter(self.metric_store, self.vault, settings.max_attempts)
        self.processor = Processor(
            settings,
            client,
            self.queue,
            self.metrics_queue,
            self.committer,
            self.metric_committer,
            self.stats,
            self.intake,
            self.detection,
        )
        self.retention = Cleanup(client, settings)
        self.ops = OpsService(
            client,
            self.stats,
            self.queue,
            self.dead_letters,
            self.retention,
            ReplayPlanner(self.events, self.metrics, self.segment, self.dead_letters),
            self.intake,
            self.audit,
        )

    @classmethod
    def create(
        cls, settings: Settings | None = None, *, kick: Kick | None = None, notify: Callable[[], None] | None = None
    ) -> Analytics:
        """Build from settings (default: the environment), connecting to Redis.
        ``notify`` asks for alert delivery (:class:`LiveDetection`)."""
        settings = settings or Settings.from_env()
        return cls(settings, connect(settings), kick=kick, notify=notify)
