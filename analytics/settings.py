"""Settings: the one place where the environment is read.

Every process (web, worker, beat, CLI) builds a :class:`Settings` from the
environment with :meth:`Settings.from_env`; tests pass a mapping instead.
Values are coerced and checked here, so the rest of the code can trust them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from analytics.errors import ConfigurationError

#: Names that carry the HIPAA Safe Harbor identifiers (contract, PHI section).
DEFAULT_PHI_FIELDS = (
    "name,first_name,last_name,email,phone,fax,ssn,address,street,city,zip,"
    "postal_code,dob,birth_date,birthdate,mrn,medical_record_number,"
    "account_number,license_number,device_id,ip,url"
)

#: Event types every installation knows, with their default priority.
DEFAULT_EVENT_TYPES = (
    "page_view,click,form_submit,api_call,login,logout,error:high,custom,identify,page,screen,group,alias"
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _int(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(name: str, raw: str, minimum: float = 0.0) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return value


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclasses.dataclass(frozen=True)
class Settings:
    """All configuration of the service. Field docs name the variable."""

    #: ``REDIS_URL``: data store (``redis://`` or ``rediss://``).
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: ``REDIS_MAX_CONNECTIONS``: connections one process keeps to Redis at
    #: most; a thread needing one while all are busy waits its turn. Ingest
    #: admissions have as many again of their own (``DedicatedConnections``).
    redis_max_connections: int = 64
    #: ``CELERY_BROKER_URL``: Celery broker; defaults to ``REDIS_URL``.
    broker_url: str = ""
    #: ``ANALYTICS_ENCRYPTION_KEYS``: Fernet-format keys, newest first.
    encryption_keys: tuple[str, ...] = ()
    #: ``ANALYTICS_HASH_KEY``: key for user-id hashes; default derived from the
    #: oldest encryption key so that hashes survive a key rotation.
    hash_key: str = ""
    #: ``ANALYTICS_DEV``: development mode (well-known key allowed, loudly).
    dev_mode: bool = False
    #: ``ANALYTICS_AUDIT_CHECKPOINTS``: the file signed audit checkpoints are
    #: appended to, outside Redis (:mod:`analytics.privacy.checkpoints`); by
    #: default under ``.run/`` of the working directory (where the Procfile
    #: runs); set empty to write none (truncating the log would not show).
    audit_checkpoints: str = ".run/audit-checkpoints.jsonl"
    #: ``ANALYTICS_AUDIT_SYSLOG``: syslog address (``/dev/log``, ``host:port``
    #: over UDP) every checkpoint is also sent to: a copy off the host.
    audit_syslog: str = ""
    #: ``ANALYTICS_AUDIT_KEY``: the key checkpoints are signed with (format of
    #: an encryption key); default derived from the hash key, with a warning.
    audit_key: str = ""
    #: ``ANALYTICS_CHECKPOINT_SECONDS``: seconds between checkpoints (beat).
    audit_checkpoint_interval: float = 60.0
    #: ``ANALYTICS_RETENTION_DAYS``: how long raw events live.
    retention_days: int = 30
    #: ``ANALYTICS_PHI_FIELDS``: field names treated as PHI (case-insensitive).
    phi_fields: tuple[str, ...] = _list(DEFAULT_PHI_FIELDS)
    #: ``ANALYTICS_EVENT_TYPES``: extra types, ``name`` or ``name:priority``.
    event_types: tuple[str, ...] = _list(DEFAULT_EVENT_TYPES)
    #: ``ANALYTICS_BATCH_SIZE``: queue entries a worker takes at once.
    batch_size: int = 64
    #: ``ANALYTICS_CLAIM_IDLE_SECONDS``: a queue entry left unacknowledged this
    #: long by a worker is taken over by another (its worker died).
    claim_idle_seconds: float = 15.0
    #: ``ANALYTICS_MAX_ATTEMPTS``: deliveries before an entry is dead-lettered.
    max_attempts: int = 5
    #: ``ANALYTICS_DRAIN_SECONDS``: how long one processing task keeps draining.
    drain_seconds: float = 5.0
    #: ``ANALYTICS_DRAIN_LINGER_SECONDS``: how long a processing task waits for
    #: new work once the queue is empty before it ends (0: end at once).
    drain_linger_seconds: float = 0.5
    #: ``ANALYTICS_RECOVERY_INTERVAL``: seconds between beat recovery sweeps.
    recovery_interval: float = 5.0
    #: ``ANALYTICS_BEAT_LOCK_SECONDS``: life of beat's lock (renewed every
    #: tick, a third of it at most apart): a second beat stands by and takes
    #: over this long after the first stopped (:mod:`tasks.beat`).
    beat_lock_seconds: float = 30.0
    #: ``ANALYTICS_MIN_REPLICAS``: replicas that must have a request's queue
    #: entries (``WAIT``) before it is answered ``202``; fewer within
    #: ``replica_timeout_ms``: ``503``. 0: no wait (one Redis, no replicas).
    min_replicas: int = 0
    #: ``ANALYTICS_REPLICA_TIMEOUT_MS``: how long an ingest request waits for
    #: ``min_replicas`` acknowledgements (``WAIT``'s timeout, ms; at least 1:
    #: 0 would mean forever).
    replica_timeout_ms: int = 100
    #: ``ANALYTICS_MAX_CLOCK_SKEW_SECONDS``: cap of the ``sentAt`` correction.
    max_clock_skew_seconds: int = 86_400
    #: ``ANALYTICS_MAX_BATCH_EVENTS``: events per request (Segment: 2,500).
    max_batch_events: int = 2500
    #: ``ANALYTICS_MAX_BODY_BYTES``: request body limit, decompressed.
    max_body_bytes: int = 512_000
    #: ``ANALYTICS_MAX_EVENT_BYTES``: one event's size limit (Segment: 32 KB).
    max_event_bytes: int = 32_768
    #: ``ANALYTICS_REGISTRY_TTL``: seconds a process caches the type registry.
    registry_ttl: float = 1.0
    #: ``ANALYTICS_SEGMENT_UNKNOWN_EVENTS``: what Segment ``track`` calls with a
    #: name the registry does not know become: ``register``, ``custom`` or
    #: ``reject`` (see :mod:`analytics.events.segment`). ``custom`` by default:
    #: a name is client text and may carry PHI; types come from the registry.
    segment_unknown_events: str = "custom"
    #: ``ANALYTICS_SEGMENT_MAX_TYPES``: cap of types the ``register`` policy adds.
    segment_max_types: int = 200
    #: ``ANALYTICS_RATE_LIMIT``: requests per second per API key (token
    #: bucket refill rate); 0 turns the limit off.
    rate_limit: float = 500.0
    #: ``ANALYTICS_RATE_BURST``: requests a key may send at once (bucket size).
    rate_burst: int = 1000
    #: ``ANALYTICS_AUTH_FAILURE_WINDOW``: authentication failures from one
    #: address are all counted, but audited once per this many seconds
    #: (and every 100th), so a flood cannot flood the audit log.
    auth_failure_window: int = 60
    #: ``ANALYTICS_WS_IDLE_SECONDS``: a WebSocket client that sends nothing for
    #: this long is logged off (HIPAA automatic logoff); 0 disables.
    ws_idle_seconds: float = 900.0
    #: ``ANALYTICS_WS_MAX_SESSION_SECONDS``: a WebSocket stream is logged off
    #: this long after it opened, whatever the client sends (``active``
    #: proves a program is there, not a person); 0 disables.
    ws_max_session_seconds: float = 28800.0
    #: ``ANALYTICS_WS_PING_SECONDS``: interval of WebSocket pings; a peer that
    #: has not answered the previous ping by the next one is dropped.
    ws_ping_seconds: float = 20.0
    #: ``ANALYTICS_WS_BUFFER``: messages waiting for one WebSocket client at
    #: most; a client that falls this far behind is dropped (close 1013).
    ws_buffer: int = 2000
    #: ``ANALYTICS_WS_METRIC_INTERVAL``: at most one update per metric series
    #: per client this often (seconds); the latest value is always sent.
    ws_metric_interval: float = 1.0
    #: ``ANALYTICS_MAX_SERIES_PER_METRIC``: distinct tag sets one metric may
    #: have (cardinality guard: tags are not ids).
    max_series_per_metric: int = 1000
    #: ``ANALYTICS_RETENTION_10S_DAYS``, ``_1M_``, ``_1H_``, ``_1D_``: how long
    #: rollup buckets of each tier (10 s, 1 min, 1 h, 1 day) live.
    rollup_retention_days: tuple[float, float, float, float] = (1.0, 7.0, 90.0, 730.0)
    #: ``ANALYTICS_CLEANUP_INTERVAL``: seconds between beat's cleanup runs.
    cleanup_interval: float = 60.0
    #: ``ANALYTICS_CORS_ORIGINS``: origins (``https://app.example.org``) whose
    #: pages may post to the ingestion endpoints from a browser; ``*`` for any.
    #: None by default: browsers then refuse cross-origin calls.
    cors_origins: tuple[str, ...] = ()
    #: ``ANALYTICS_CORS_CREDENTIALS``: answer ``Access-Control-Allow-Credentials``
    #: (cookies and credentialed fetches); refused together with ``*``.
    cors_credentials: bool = False
    #: ``ANALYTICS_CORS_MAX_AGE``: seconds a browser may cache a preflight answer.
    cors_max_age: int = 7200
    #: ``ANALYTICS_ANOMALY_DETECTION``: score every metric series and event
    #: count live on the workers (:mod:`analytics.anomaly.live`); on by default.
    anomaly_detection: bool = True
    #: ``ANALYTICS_ANOMALY_RESOLUTION``: the bucket (seconds) the live detector
    #: scores, 10 or 60: one point per series per bucket as the bucket closes.
    anomaly_resolution: int = 60
    #: ``ANALYTICS_ANOMALY_IDLE_SECONDS``: a series that has had no new data
    #: for this long has its open bucket closed (and, for an event count, the
    #: empty buckets since scored as zeros) by the recovery sweep.
    anomaly_idle_seconds: float = 120.0
    #: ``ANALYTICS_ALERT_SIGNING_KEY``: the secret alert webhooks are signed
    #: with (HMAC-SHA256, see docs/alerts.rst); default derived from the
    #: encryption keys (:attr:`analytics.privacy.crypto.Vault.derived_alert_secret`).
    alert_signing_key: str = ""
    #: ``ANALYTICS_ALERT_MAX_ATTEMPTS``: webhook attempts before a
    #: notification is set aside in ``analytics:alerts:dead``.
    alert_max_attempts: int = 8
    #: ``ANALYTICS_ALERT_RETRY_SECONDS``: wait after the first failed attempt;
    #: doubled after each further one (at most an hour).
    alert_retry_seconds: float = 10.0
    #: ``ANALYTICS_ALERT_TIMEOUT_SECONDS``: how long one webhook call may take.
    alert_timeout_seconds: float = 5.0
    #: ``ANALYTICS_ALERT_RULES_TTL``: seconds a worker caches the alert rules.
    alert_rules_ttl: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``).

        Keyword ``overrides`` win over the environment; tests use them.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        get = env.get
        if get("REDIS_URL"):
            values["redis_url"] = get("REDIS_URL")
        if get("CELERY_BROKER_URL"):
            values["broker_url"] = get("CELERY_BROKER_URL")
        if get("ANALYTICS_ENCRYPTION_KEYS"):
            values["encryption_keys"] = _list(get("ANALYTICS_ENCRYPTION_KEYS", ""))
        if get("ANALYTICS_HASH_KEY"):
            values["hash_key"] = get("ANALYTICS_HASH_KEY")
        if get("ANALYTICS_AUDIT_CHECKPOINTS") is not None:  # set empty: none written
            values["audit_checkpoints"] = get("ANALYTICS_AUDIT_CHECKPOINTS", "").strip()
        if get("ANALYTICS_AUDIT_SYSLOG"):
            values["audit_syslog"] = get("ANALYTICS_AUDIT_SYSLOG", "").strip()
        if get("ANALYTICS_AUDIT_KEY"):
            values["audit_key"] = get("ANALYTICS_AUDIT_KEY")
        if get("ANALYTICS_ALERT_SIGNING_KEY"):
            values["alert_signing_key"] = get("ANALYTICS_ALERT_SIGNING_KEY")
        if get("ANALYTICS_DEV") is not None:
            values["dev_mode"] = _bool("ANALYTICS_DEV", get("ANALYTICS_DEV", ""))
        if get("ANALYTICS_PHI_FIELDS"):
            values["phi_fields"] = _list(get("ANALYTICS_PHI_FIELDS", ""))
        if get("ANALYTICS_EVENT_TYPES"):
            values["event_types"] = cls.event_types + _list(get("ANALYTICS_EVENT_TYPES", ""))
        if get("ANALYTICS_SEGMENT_UNKNOWN_EVENTS"):
            policy = get("ANALYTICS_SEGMENT_UNKNOWN_EVENTS", "").strip().lower()
            if policy not in ("register", "custom", "reject"):
                raise ConfigurationError(
                    f"ANALYTICS_SEGMENT_UNKNOWN_EVENTS must be register, custom or reject, got {policy!r}"
                )
            values["segment_unknown_events"] = policy
        if get("ANALYTICS_CORS_ORIGINS"):
            values["cors_origins"] = tuple(o.rstrip("/") for o in _list(get("ANALYTICS_CORS_ORIGINS", "")))
        if get("ANALYTICS_ANOMALY_DETECTION") is not None:
            values["anomaly_detection"] = _bool("ANALYTICS_ANOMALY_DETECTION", get("ANALYTICS_ANOMALY_DETECTION", ""))
        if get("ANALYTICS_ANOMALY_RESOLUTION"):
            resolution = get("ANALYTICS_ANOMALY_RESOLUTION", "").strip()
            if resolution not in ("10", "60"):
                raise ConfigurationError(f"ANALYTICS_ANOMALY_RESOLUTION must be 10 or 60, got {resolution!r}")
            values["anomaly_resolution"] = int(resolution)
        if get("ANALYTICS_CORS_CREDENTIALS") is not None:
            values["cors_credentials"] = _bool("ANALYTICS_CORS_CREDENTIALS", get("ANALYTICS_CORS_CREDENTIALS", ""))
        if "*" in values.get("cors_origins", ()) and values.get("cors_credentials"):
            # Browsers ignore "*" on credentialed requests; echoing every origin
            # instead would let any site post with a user's cookies.
            raise ConfigurationError(
                "ANALYTICS_CORS_ORIGINS=* cannot be combined with ANALYTICS_CORS_CREDENTIALS: list the origins"
            )
        for name, field, minimum in (
            ("REDIS_MAX_CONNECTIONS", "redis_max_connections", 1),
            ("ANALYTICS_SEGMENT_MAX_TYPES", "segment_max_types", 0),
            ("ANALYTICS_RETENTION_DAYS", "retention_days", 1),
            ("ANALYTICS_BATCH_SIZE", "batch_size", 1),
            ("ANALYTICS_MAX_ATTEMPTS", "max_attempts", 1),
            ("ANALYTICS_MAX_CLOCK_SKEW_SECONDS", "max_clock_skew_seconds", 0),
            ("ANALYTICS_MAX_BATCH_EVENTS", "max_batch_events", 1),
            ("ANALYTICS_MAX_BODY_BYTES", "max_body_bytes", 1024),
            ("ANALYTICS_MAX_EVENT_BYTES", "max_event_bytes", 256),
            ("ANALYTICS_RATE_BURST", "rate_burst", 1),
            ("ANALYTICS_AUTH_FAILURE_WINDOW", "auth_failure_window", 1),
            ("ANALYTICS_WS_BUFFER", "ws_buffer", 1),
            ("ANALYTICS_MAX_SERIES_PER_METRIC", "max_series_per_metric", 1),
            ("ANALYTICS_CORS_MAX_AGE", "cors_max_age", 0),
            ("ANALYTICS_MIN_REPLICAS", "min_replicas", 0),
            ("ANALYTICS_REPLICA_TIMEOUT_MS", "replica_timeout_ms", 1),
            ("ANALYTICS_ALERT_MAX_ATTEMPTS", "alert_max_attempts", 1),
        ):
            if get(name):
                values[field] = _int(name, get(name, ""), minimum)
        for name, field in (
            ("ANALYTICS_CLAIM_IDLE_SECONDS", "claim_idle_seconds"),
            ("ANALYTICS_DRAIN_SECONDS", "drain_seconds"),
            ("ANALYTICS_DRAIN_LINGER_SECONDS", "drain_linger_seconds"),
            ("ANALYTICS_RECOVERY_INTERVAL", "recovery_interval"),
            ("ANALYTICS_BEAT_LOCK_SECONDS", "beat_lock_seconds"),
            ("ANALYTICS_REGISTRY_TTL", "registry_ttl"),
            ("ANALYTICS_RATE_LIMIT", "rate_limit"),
            ("ANALYTICS_WS_IDLE_SECONDS", "ws_idle_seconds"),
            ("ANALYTICS_WS_MAX_SESSION_SECONDS", "ws_max_session_seconds"),
            ("ANALYTICS_WS_PING_SECONDS", "ws_ping_seconds"),
            ("ANALYTICS_WS_METRIC_INTERVAL", "ws_metric_interval"),
            ("ANALYTICS_CLEANUP_INTERVAL", "cleanup_interval"),
            ("ANALYTICS_CHECKPOINT_SECONDS", "audit_checkpoint_interval"),
            ("ANALYTICS_ANOMALY_IDLE_SECONDS", "anomaly_idle_seconds"),
            ("ANALYTICS_ALERT_RETRY_SECONDS", "alert_retry_seconds"),
            ("ANALYTICS_ALERT_TIMEOUT_SECONDS", "alert_timeout_seconds"),
            ("ANALYTICS_ALERT_RULES_TTL", "alert_rules_ttl"),
        ):
            if get(name):
                values[field] = _float(name, get(name, ""))
        tiers = list(cls.rollup_retention_days)
        for i, tier in enumerate(("10S", "1M", "1H", "1D")):
            name = f"ANALYTICS_RETENTION_{tier}_DAYS"
            if get(name):
                tiers[i] = _float(name, get(name, ""), 0.001)
        values["rollup_retention_days"] = tuple(tiers)
        values.update(overrides)
        settings = cls(**values)
        if not settings.broker_url:
            settings = dataclasses.replace(settings, broker_url=settings.redis_url)
        return settings

    def require_keys(self) -> None:
        """Refuse to run without encryption keys outside development mode."""
        if not self.encryption_keys and not self.dev_mode:
            raise ConfigurationError(
                "ANALYTICS_ENCRYPTION_KEYS is not set: refusing to start without "
                "encryption keys (generate one with `analytics keys generate-encryption-key`, "
                "or set ANALYTICS_DEV=1 for development only)"
            )
