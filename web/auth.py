"""API key authentication for views: ``@require("read")``."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request

from analytics.apikeys import ApiKey
from analytics.errors import AuthenticationError
from web.extensions import get_service

F = TypeVar("F", bound=Callable[..., Any])


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def authenticate(secret: str | None) -> ApiKey:
    """The request's key (rate limit taken); failures are counted and audited."""
    key = get_service().authenticate(secret, where="http", remote=request.remote_addr)
    g.api_key = key
    return key


def require(action: str,
            credentials: Callable[[], str | None] = bearer_token) -> Callable[[F], F]:
    """Views decorated with this need a key whose role grants ``action``.

    ``credentials`` finds the key in the request (default: the Bearer token;
    the Segment-compatible paths also read Basic auth and ``writeKey``).
    """

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                secret = credentials()
            except AuthenticationError:  # malformed credentials are a failure too
                get_service().audit_auth_failure("http", request.remote_addr, "malformed")
                raise
            authenticate(secret).require(action)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator
