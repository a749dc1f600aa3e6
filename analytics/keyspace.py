"""The Redis key layout, in one place.

Every key lives under ``analytics:``. Keys never contain PHI: user ids appear
only as keyed hashes (see :mod:`analytics.privacy.crypto`).

===========================================  =======  =====================================
key                                          type     holds
===========================================  =======  =====================================
``analytics:events:queue``                   stream   accepted, unprocessed events of
                                                      priority ``normal`` (contract key)
``analytics:events:queue:{priority}``        stream   the same for ``critical``, ``high``
                                                      and ``low``: one lane per priority so
                                                      that a backlog drains highest first
``analytics:events:processed:{type}``        hash     page id -> *page*: the stored records
                                                      (msgpack blobs, PHI sealed) of one type
                                                      whose timestamps fall in one minute,
                                                      one after another, up to 16 KB
                                                      (:mod:`analytics.events.store`)
``analytics:events:time:{type}``             zset     page id scored by the newest timestamp
                                                      (ms) in the page
``analytics:events:pages:{type}``            hash     minute (epoch ms / 60000) -> its open
                                                      page (the one records are appended
                                                      to); ``#``: the last page sequence
``analytics:events:ids:{shard}``             set      the messageId dedupe index: 65,536
                                                      shards of 64-bit integers (intsets),
                                                      see :func:`analytics.events.records.dedupe_key`
``analytics:events:count``                   string   stored events (dedupe index size)
``analytics:events:user:{user_hash}``        zset     ``type:page id`` scored by the owner's
                                                      newest timestamp in that page: one
                                                      owner's events (queries, erasure);
                                                      the owner is the user hash, else the
                                                      anonymous hash of an anonymous-only
                                                      record (:mod:`analytics.events.records`)
``analytics:event-types``                    hash     registered type -> JSON definition
``analytics:apikeys``                        hash     SHA-256 of an API key -> JSON record
``analytics:apikeys:ids``                    hash     key id -> SHA-256 (list, revoke)
``analytics:kick:events``                    string   set while a processing task is queued
``analytics:stats:*``                        various  monitoring figures (table in
                                                      :mod:`analytics.ops.stats`)
``analytics:audit``                          stream   the audit log, HMAC-chained
                                                      (:mod:`analytics.privacy.audit`)
``analytics:audit:head``                     string   mac of the last audit entry
``analytics:dlq:{kind}``                     stream   dead letters, ``kind`` = ``events``,
                                                      ``metrics`` or ``segment``: reason,
                                                      attempts, the record (PHI sealed) or
                                                      the sealed raw message; ``user`` field
                                                      = owner hash (user, else anonymous),
                                                      for erasure
                                                      (:mod:`analytics.pipeline.deadletters`)
``analytics:erased``                         hash     owner hash (user, or linked anonymous
                                                      id) -> erasure time (ms): queued
                                                      events of an erased owner received
                                                      before that time are dropped at
                                                      commit (:mod:`analytics.privacy.erasure`)
``analytics:erased:links:{user_hash}``       set      anonymous hashes linked to a user
                                                      whose erasure is under way; deleted
                                                      when it completes (an interrupted
                                                      erasure run again picks them up)
``analytics:rate:{key hash prefix}``         string   rate limit of one API key: when its
                                                      token bucket is full again (us; not
                                                      in the AOF; expires)
``analytics:authfail:{remote hash}``         string   auth failures of one remote address
                                                      in the current window (audit
                                                      throttling; expires)
``analytics:stats:auth_failures``            string   authentication failures, all counted
``analytics:rotation``                       hash     progress of a key rotation (resume)
``analytics:keys:fingerprints``              hash     ``hash`` and ``enc:{fingerprint}``:
                                                      fingerprints of the keys stored data
                                                      needs (:mod:`analytics.privacy.fingerprints`)
``analytics:stats:ws:{host-pid}``            hash     one web process's WebSocket figures
                                                      (clients, messages, errors, auth
                                                      failures); TTL 30 s, rewritten every 2 s
``analytics:live:events``                    channel  pub/sub: msgpack array of type, blob,
                                                      type, blob... of the records just
                                                      stored (fan-out to WebSockets)
``analytics:live:metrics``                   channel  pub/sub: JSON array of updated metric
                                                      buckets
``analytics:metrics:queue``                  stream   accepted, unprocessed metric samples
                                                      (one entry per request)
``analytics:metrics:{name}``                 hash     series id -> JSON tag set: the series
                                                      of one metric (contract key); its
                                                      length is the metric's cardinality
``analytics:metrics:tags:{name}``            hash     ``key:value`` -> series ids having that
                                                      tag (concatenated 12-char ids): the tag
                                                      index (contract key)
``analytics:metrics:{name}:seen``            zset     series id scored by its newest sample
                                                      (epoch s): cleanup forgets series
                                                      whose rollups have all expired
``analytics:metrics:{name}:r{res}:{sid}:``   hash     rollup chunk of one series at tier
``{chunk}``                                           ``res`` s: bucket offset -> packed
                                                      count, sum, min, max, sum of squares
``analytics:metrics:{name}:r{res}:{sid}:``   hash     the same chunk's quantile sketches:
``{chunk}:q``                                         bucket offset -> packed (bin code,
                                                      count) pairs
``analytics:rollups:expiry``                 zset     rollup chunk keys scored by the epoch
                                                      second they expire (cleanup's index)
``analytics:lock:cleanup``                   string   token of the running cleanup (lock)
``analytics:lock:beat``                      string   the beat that sends the periodic tasks
                                                      (lease, renewed every tick; other
                                                      beats stand by: :mod:`tasks.beat`)
``analytics:stats:beat``                     hash     beat holder -> periodic tasks it sent
``analytics:stats:cleanup``                  hash     last cleanup: time, duration, removed
``analytics:anomaly:{name}:r{res}:{sid}``    hash     one series' live detector: ``last``
                                                      (last scored bucket, epoch s), ``det``
                                                      (detector state, about 1 KB),
                                                      ``alerts`` (alert rule states)
``analytics:anomaly:series``                 zset     JSON ``[name, series id]`` of every
                                                      live detector, scored by when it last
                                                      advanced (epoch s; the idle sweep)
``analytics:anomalies:{name}``               zset     anomalies of metric ``name`` (JSON,
                                                      with score and expected band) scored
                                                      by bucket start (epoch s)
``analytics:alerts:outbox``                  stream   alert notifications waiting for their
                                                      webhook deliveries
``analytics:alerts:rules``                   hash     alert rule id -> JSON rule (metric,
                                                      tag filter, condition, duration,
                                                      cool-down, webhook URL)
                                                      (:mod:`analytics.alerts.rules`)
``analytics:alerts:dead``                    stream   alert notifications whose webhook kept
                                                      failing: rule, attempts, last status,
                                                      the notification (no sealed values,
                                                      so not under ``analytics:dlq:``)
``analytics:alerts:audited:{entry id}``      string   set once an outbox entry's alert is
                                                      audited: a redelivered entry is not
                                                      audited again (expires after a day)
===========================================  =======  =====================================

Metric names never contain ``:``, and ``queue`` and ``tags`` are reserved, so
a metric's keys cannot collide with the fixed ones. ``events.{type}`` metrics
(per-type event counts) are written by the event commit itself.

The consumer group of every queue stream is :data:`GROUP`.
"""

from __future__ import annotations

PREFIX = "analytics:"
GROUP = "analytics-workers"

PRIORITIES = ("critical", "high", "normal", "low")

EVENT_QUEUE = "analytics:events:queue"
EVENTS_PROCESSED = "analytics:events:processed:"
EVENTS_TIME = "analytics:events:time:"
EVENT_IDS = "analytics:events:ids:"
EVENT_PAGES = "analytics:events:pages:"
EVENT_COUNT = "analytics:events:count"
EVENTS_USER = "analytics:events:user:"
EVENT_TYPES = "analytics:event-types"
API_KEYS = "analytics:apikeys"
API_KEY_IDS = "analytics:apikeys:ids"
KICK_EVENTS = "analytics:kick:events"
STATS = "analytics:stats:"
AUDIT = "analytics:audit"
DLQ_PREFIX = "analytics:dlq:"
ERASED = "analytics:erased"
ERASURE_LINKS = "analytics:erased:links:"
#: A string (``lua/token_bucket.lua``). It was a hash under
#: ``analytics:ratelimit:``: a new name, so that an upgraded process never
#: reads an old bucket (those expire by themselves).
RATE_BUCKET = "analytics:rate:"
AUTH_FAILURES_BY_REMOTE = "analytics:authfail:"
AUTH_FAILURES_TOTAL = "analytics:stats:auth_failures"
#: A counter: clear values sealed anyway because they looked like identifiers.
PHI_SCREENED = "analytics:stats:phi_screened"
ROTATION = "analytics:rotation"
KEY_FINGERPRINTS = "analytics:keys:fingerprints"
WS_STATS = "analytics:stats:ws:"
LIVE_EVENTS = "analytics:live:events"
LIVE_METRICS = "analytics:live:metrics"
#: Pub/sub: key ids revoked and user hashes erased (JSON ``{"keys", "users"}``),
#: so every web process closes the streams they opened at once.
LIVE_REVOKED = "analytics:live:revoked"
METRICS_QUEUE = "analytics:metrics:queue"
METRICS = "analytics:metrics:"
METRIC_TAGS = "analytics:metrics:tags:"
ROLLUP_EXPIRY = "analytics:rollups:expiry"
CLEANUP_LOCK = "analytics:lock:cleanup"
#: Live anomaly detection: series with detector state, scored by when their
#: detector last advanced (epoch s), so the idle ones can be found.
DETECTORS = "analytics:anomaly:series"
#: Alert notifications waiting for delivery (a stream, JSON entries).
ALERT_OUTBOX = "analytics:alerts:outbox"
#: Alert rules, their undeliverable notifications, and the consumer group
#: that delivers the outbox (:mod:`analytics.alerts.delivery`).
ALERT_RULES = "analytics:alerts:rules"
ALERT_DEAD = "analytics:alerts:dead"
ALERT_AUDITED = "analytics:alerts:audited:"
ALERT_GROUP = "analytics-alerts"
CLEANUP_STATS = "analytics:stats:cleanup"
BEAT_LOCK = "analytics:lock:beat"
BEAT_STATS = "analytics:stats:beat"


def event_queue(priority: str) -> str:
    """The queue lane of ``priority`` (``normal`` is the contract's key)."""
    return EVENT_QUEUE if priority == "normal" else f"{EVENT_QUEUE}:{priority}"


#: Lanes in the order workers drain them.
EVENT_QUEUES = tuple(event_queue(p) for p in PRIORITIES)


def processed(event_type: str) -> str:
    return EVENTS_PROCESSED + event_type


def time_index(event_type: str) -> str:
    return EVENTS_TIME + event_type


def user_index(user_hash: str) -> str:
    return EVENTS_USER + user_hash


def erasure_links(user_hash: str) -> str:
    return ERASURE_LINKS + user_hash


def open_pages(event_type: str) -> str:
    return EVENT_PAGES + event_type


def dedupe_shard(shard: str) -> str:
    return EVENT_IDS + shard


def rate_bucket(key_digest: str) -> str:
    """The rate limit of the API key whose SHA-256 is ``key_digest``."""
    return RATE_BUCKET + key_digest[:24]


def metric_series(name: str) -> str:
    """The series registry of metric ``name`` (contract key)."""
    return METRICS + name


def metric_tags(name: str) -> str:
    """The tag index of metric ``name`` (contract key)."""
    return METRIC_TAGS + name


def metric_seen(name: str) -> str:
    """Series of metric ``name`` scored by their newest sample."""
    return f"{METRICS}{name}:seen"


def rollup_chunk(name: str, resolution: int, series_id: str, chunk_start: int) -> str:
    """One series' rollup buckets at one tier, for one chunk of time."""
    return f"{METRICS}{name}:r{resolution}:{series_id}:{chunk_start}"


def detector_prefix(name: str) -> str:
    """What the live detector keys of metric ``name`` start with."""
    return f"{PREFIX}anomaly:{name}:r"


def detector_state(name: str, resolution: int, series_id: str) -> str:
    """One series' live detector (a hash: last scored bucket, detector
    state, alert state)."""
    return f"{detector_prefix(name)}{resolution}:{series_id}"


def anomalies(name: str) -> str:
    """Anomalies found on metric ``name``, scored by bucket start (epoch s)."""
    return f"{PREFIX}anomalies:{name}"
