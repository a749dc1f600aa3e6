"""What every process checks before it starts serving, and how it settles
its heap once started (:func:`freeze_startup_heap`).

Outside development mode a process without ``ANALYTICS_ENCRYPTION_KEYS``
refuses to start with one clear line on standard error and exit status 1:
no traceback, no half-started server. In development mode it starts with a
loud warning (the well-known key protects nothing). A process whose keys do
not fit the stored data (another user hash key, an old encryption key
dropped) refuses the same way (:mod:`analytics.privacy.fingerprints`).

Called by ``create_app`` (web), gunicorn's ``on_starting`` hook (so the
master stops instead of respawning failing workers), Celery's
``worker_init``/``beat_init`` signals and the CLI.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping

import redis

from analytics.errors import ConfigurationError
from analytics.logs import configure_logging, install
from analytics.privacy.checkpoints import syslog_handler
from analytics.privacy.crypto import Vault, decode_audit_key
from analytics.privacy.fingerprints import KeyFingerprints
from analytics.redis_client import connect
from analytics.settings import Settings

log = logging.getLogger("analytics.startup")

DEV_WARNING = (
    "!!! DEVELOPMENT MODE (ANALYTICS_DEV=1, no ANALYTICS_ENCRYPTION_KEYS): PHI is sealed "
    "with a well-known key and is NOT protected. Never put real data in this instance. !!!"
)


CHECKPOINTS_OFF = (
    "ANALYTICS_AUDIT_CHECKPOINTS is empty: no audit checkpoints are written outside Redis, "
    "so removing the newest audit entries or the whole log would not show (docs/security.rst)"
)


def check_settings(settings: Settings, process: str) -> None:
    """Exit (``SystemExit`` with one line) when ``settings`` may not run.

    ``process`` names the process in the message (``web``, ``worker``...).
    """
    try:
        settings.require_keys()
        if settings.encryption_keys:
            # Builds the vault once: a malformed key is reported here, in one
            # line, rather than as a traceback at the first request.
            check_fingerprints(settings, Vault(settings.encryption_keys, settings.hash_key))
        if settings.audit_key:
            decode_audit_key(settings.audit_key)  # malformed: one line now
        handler = syslog_handler(settings.audit_syslog)
        if handler is not None:
            handler.close()
    except ConfigurationError as exc:
        raise SystemExit(f"analytics {process}: {exc.message}") from None
    if not settings.encryption_keys:
        log.warning(DEV_WARNING)
    if process == "beat" and not settings.audit_checkpoints and not settings.dev_mode:
        log.warning(CHECKPOINTS_OFF)


def check_fingerprints(settings: Settings, vault: Vault) -> None:
    """The configured keys against the fingerprints stored in Redis
    (:class:`ConfigurationError` when they do not fit).

    Redis away at start is not a reason to refuse (processes wait for it
    elsewhere); it is said, and the next start checks.
    """
    client = connect(settings)
    try:
        KeyFingerprints(client, vault).check()
    except redis.RedisError as exc:
        log.warning("could not check the key fingerprints (%s): is Redis running?", type(exc).__name__)
    finally:
        client.connection_pool.disconnect()


def start_process(
    process: str,
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    own_handler: bool = True,
) -> Settings:
    """Scrubbing logs first, then the settings check: the common start of
    every process. Returns the settings it checked.

    ``own_handler=False`` for processes whose framework brings its log
    handlers (Celery): only the filter is installed.
    """

    try:
        settings = settings or Settings.from_env(environ)
    except ConfigurationError as exc:
        raise SystemExit(f"analytics {process}: {exc.message}") from None
    if own_handler:
        configure_logging(settings.phi_fields)
    else:
        install(settings.phi_fields)
    check_settings(settings, process)
    return settings


def freeze_startup_heap() -> None:
    """Move every object alive now (modules, the app, its clients) out of
    the garbage collector's sight, once a process has finished starting.

    Measured (bench/HISTORY.rst, 2026-11-29): a full collection walks the heap,
    some 70,000 objects once Flask, Celery and numpy are imported, and took
    20-30 ms. A metric query keeps enough objects alive to trigger one every
    few queries, so those pauses made its p99. Nearly everything loaded at
    start lives as long as the process. The trade-off: a frozen cycle that
    becomes garbage later is never collected, which for start-up objects
    costs a little memory at most. After this, a collection walks what the
    process allocated since. Called by gunicorn's ``post_worker_init`` and
    Celery's ``worker_process_init``.
    """
    gc.collect()  # start-up garbage is freed, not kept for ever
    gc.freeze()
