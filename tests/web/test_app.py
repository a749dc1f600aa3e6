"""The app factory's Flask subclass."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from flask import Flask

from web import AnalyticsFlask


def test_ensure_sync_asks_flask_once_per_function_and_app(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []
    flask_ensure_sync = Flask.ensure_sync

    def counting(self: Flask, func: Any) -> Any:
        asked.append(func)
        return flask_ensure_sync(self, func)

    monkeypatch.setattr(Flask, "ensure_sync", counting)
    app, other = AnalyticsFlask(__name__), AnalyticsFlask(__name__)

    def view() -> str:
        return "ok"

    assert app.ensure_sync(view) is view and app.ensure_sync(view) is view
    assert asked == [view]  # asked once
    assert other.ensure_sync(view) is view and asked == [view, view]  # each app its own
    gone = weakref.ref(other)
    del other
    gc.collect()
    assert gone() is None  # nothing outside the app keeps it alive


def test_a_coroutine_view_is_not_taken_for_a_plain_one() -> None:
    async def view() -> str:
        return "ok"

    app = AnalyticsFlask(__name__)
    try:
        wrapped = app.ensure_sync(view)
    except RuntimeError:  # Flask without its async extra says so, every time
        with pytest.raises(RuntimeError):
            app.ensure_sync(view)
    else:
        assert wrapped is not view
