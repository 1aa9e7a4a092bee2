"""Broker failures, classified by what a retry can do about them.

- `DefinitiveBrokerError`: the broker answered and said no (input, permission, margin, rejected).
  Nothing was placed; a retry would get the same answer.
- `AmbiguousBrokerError`: the request may or may not have reached the broker (read timeout,
  connection dropped, 5xx). The order may exist: reconcile by tag before any retry.
- `RateLimitedError`: HTTP 429. Nothing was placed; retry after a delay.
- `SessionExpiredError`: the access token is no longer valid; a person must log in again.

Every error keeps the HTTP status and the broker's `error_type` (or the transport exception's class
name) when there was one, and never the access token.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every broker failure. `retryable` says whether trying again can help."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_type: str | None = None,
        broker_message: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.error_type = error_type
        # The broker's own words, without our context: what a person should be shown.
        self.broker_message = broker_message


class DefinitiveBrokerError(BrokerError):
    retryable = False


class OrderRejectedError(DefinitiveBrokerError):
    """The broker accepted the request but the order ended REJECTED."""


class OrderNotFoundError(DefinitiveBrokerError):
    """No order with that id in this account's order book."""


class InvalidOrderError(DefinitiveBrokerError):
    """The request's parameters are wrong (Kite InputException, or caught before sending): fix the input."""


class PermissionDeniedError(DefinitiveBrokerError):
    """The account or the app may not do this (Kite PermissionException)."""


class OrderRefusedError(DefinitiveBrokerError):
    """The broker refused to place, modify or cancel the order (Kite OrderException)."""


class InsufficientFundsError(DefinitiveBrokerError):
    """Not enough margin for the order (Kite MarginException)."""


class InsufficientHoldingsError(DefinitiveBrokerError):
    """Not enough holdings to sell (Kite HoldingException)."""


class AccountError(DefinitiveBrokerError):
    """The account itself is in a state that forbids this (Kite UserException)."""


class InstrumentNotFoundError(DefinitiveBrokerError):
    """The broker knows no instrument by that exchange and symbol."""


class BrokerConfigurationError(DefinitiveBrokerError):
    """The adapter is set up wrongly (bad root URL, unsupported client): nothing was sent."""


class AmbiguousBrokerError(BrokerError):
    """The outcome is unknown. `may_have_reached_broker` is False only when the request provably
    never left this machine (no connection could be made), so no wait is needed before a lookup."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_type: str | None = None,
        broker_message: str | None = None,
        may_have_reached_broker: bool = True,
    ):
        super().__init__(
            message, http_status=http_status, error_type=error_type, broker_message=broker_message
        )
        self.may_have_reached_broker = may_have_reached_broker


class MalformedBrokerResponseError(AmbiguousBrokerError):
    """The broker answered, but not in a shape we can read: whatever was asked may have happened."""


class RateLimitedError(BrokerError):
    retryable = True


class SendSlotMissedError(RateLimitedError):
    """Not sent: the request would have left later than its send slot allows (a busy process), and a
    late request crowds the next ones' second at the broker. It waits for a new slot."""


class SessionExpiredError(BrokerError):
    """TokenException: re-login needed. Never retried: it would only fail again."""

    retryable = False
