"""The project's exceptions. Every error the domain raises is an
:class:`AnalyticsError`; the web layer maps ``code``/``status`` to the
contract's JSON errors in one place (``web/errors.py``).

Messages and ``details`` must never contain a PHI value: they name fields,
never echo what was in them.
"""

from __future__ import annotations

from typing import Any


class AnalyticsError(Exception):
    """Base of every error of the service."""

    code = "error"
    status = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ConfigurationError(AnalyticsError):
    code = "configuration_error"


class ValidationError(AnalyticsError):
    code = "validation_error"
    status = 400


class AuthenticationError(AnalyticsError):
    code = "unauthorized"
    status = 401


class PermissionDenied(AnalyticsError):
    code = "forbidden"
    status = 403


class NotFound(AnalyticsError):
    code = "not_found"
    status = 404


class PayloadTooLarge(AnalyticsError):
    code = "payload_too_large"
    status = 413


class RateLimited(AnalyticsError):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"retry_after": retry_after})
        self.retry_after = retry_after


class StoreUnavailable(AnalyticsError):
    """Redis cannot be reached (or refuses writes): nothing was accepted."""

    code = "unavailable"
    status = 503


class NotReplicated(AnalyticsError):
    """The queue entries were written to the Redis master, but fewer
    replicas than ``ANALYTICS_MIN_REPLICAS`` acknowledged them within
    ``ANALYTICS_REPLICA_TIMEOUT_MS``: not answered as accepted, since losing
    that master now would lose them. They may still be processed; a client
    retrying with the same messageIds has each event stored once."""

    code = "unavailable"
    status = 503

    def __init__(self, acknowledged: int, required: int, retry_after: int = 1) -> None:
        super().__init__(
            f"the data was not confirmed by enough Redis replicas in time ({acknowledged} of {required}); "
            "it may still be processed: retry the same request (events are stored once by messageId)",
            {"replicas": acknowledged, "required": required, "retry_after": retry_after},
        )
        self.retry_after = retry_after
