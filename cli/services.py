"""The domain services as one command sees them."""

from __future__ import annotations

import click

from analytics import Analytics, Settings
from analytics.pipeline.intake import Kick
from tasks.celery_app import create_celery_app, wakeup


def analytics(*, wake_workers: bool = False) -> Analytics:
    """The services, built from the environment for the running command.
    Their Redis connections close when it ends (not whenever the garbage
    collector gets to them). With ``wake_workers``, queued work asks for a
    processing task as the web's does (imports, replays)."""
    settings = Settings.from_env()
    kick: Kick | None = wakeup(create_celery_app(settings)) if wake_workers else None
    app = Analytics.create(settings, kick=kick)
    app.fingerprints.check()  # keys that do not fit the stored data: one line, exit 1
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(app.redis.close)
    return app
