"""API key authentication for views: ``@require("read")``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request

from analytics.errors import AuthenticationError
from analytics.privacy.apikeys import ApiKey
from web.extensions import get_analytics

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def authenticate(secret: str | None) -> ApiKey:
    """The request's key (rate limit taken); failures are counted and audited."""
    key = get_analytics().access.authenticate(secret, where="http", remote=request.remote_addr)
    g.api_key = key
    return key


def read_credentials(credentials: Callable[[], str | None] = bearer_token) -> str | None:
    """The request's key as ``credentials`` finds it; malformed credentials
    are an authentication failure too (counted and audited)."""
    try:
        return credentials()
    except AuthenticationError:
        get_analytics().access.audit_failure("http", request.remote_addr, "malformed")
        raise


def prepare_after_key(secret: str | None, action: str, prepare: Callable[[], T]) -> T:
    """``prepare()`` (parse and validate the body, no I/O) for a view that
    checks its key afterwards, in the same round trip as its writes
    (:meth:`Intake.admit`). The answers keep ``@require``'s order:
    a missing key is a 401 before anything, and when ``prepare`` fails the
    key is checked first, so a bad key's 401 (or a 429, 403) comes before
    the body's 400 or 413."""
    if secret is None:
        authenticate(secret)  # 401, counted and audited
    try:
        return prepare()
    except Exception:
        authenticate(secret).require(action)
        raise


def require(action: str, credentials: Callable[[], str | None] = bearer_token) -> Callable[[F], F]:
    """Views decorated with this need a key whose role grants ``action``.

    ``credentials`` finds the key in the request (default: the Bearer token;
    the Segment-compatible paths also read Basic auth and ``writeKey``).
    """

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            authenticate(read_credentials(credentials)).require(action)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator
