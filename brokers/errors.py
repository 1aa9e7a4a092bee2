"""Broker failures, classified by what a retry can do about them.

- `DefinitiveBrokerError`: the broker answered and said no (input, permission, margin, rejected).
  Nothing was placed; a retry would get the same answer.
- `AmbiguousBrokerError`: the request may or may not have reached the broker (read timeout,
  connection dropped, 5xx). The order may exist: reconcile by tag before any retry.
- `RateLimitedError`: HTTP 429. Nothing was placed; retry after a delay.
- `SessionExpiredError`: the access token is no longer valid; a person must log in again.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every broker failure. `retryable` says whether trying again can help."""

    retryable: bool = False

    def __init__(self, message: str, *, http_status: int | None = None, error_type: str | None = None):
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.error_type = error_type


class DefinitiveBrokerError(BrokerError):
    retryable = False


class OrderRejectedError(DefinitiveBrokerError):
    """The broker accepted the request but the order ended REJECTED."""


class AmbiguousBrokerError(BrokerError):
    retryable = True


class RateLimitedError(BrokerError):
    retryable = True


class SessionExpiredError(BrokerError):
    """TokenException: re-login needed. Never retried: it would only fail again."""

    retryable = False


class OrderNotFoundError(DefinitiveBrokerError):
    """No order with that id in this account's order book."""
