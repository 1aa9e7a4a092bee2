"""Errors the paper broker answers with, each carrying Kite's `error_type` and HTTP status.

The kiteconnect client raises `kiteconnect.exceptions.<error_type>` with `.code` = the HTTP status,
so these pairs decide what a caller sees. Retrying helps only for `NetworkError` (and, sometimes,
`GeneralError`): the others describe the request or the account, not the moment.
"""

from __future__ import annotations


class KiteError(Exception):
    """An error answer in Kite's envelope."""

    error_type = "GeneralException"
    http_status = 500

    def __init__(self, message: str, *, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        if http_status is not None:
            self.http_status = http_status


class TokenError(KiteError):
    """Missing, unknown or expired access token: log in again."""

    error_type = "TokenException"
    http_status = 403


class InputError(KiteError):
    """A missing or invalid parameter: fix the request."""

    error_type = "InputException"
    http_status = 400


class OrderError(KiteError):
    """The order cannot be modified or cancelled in its present state."""

    error_type = "OrderException"
    http_status = 400


class MarginError(KiteError):
    """Not enough funds for a modification (the kiteconnect client raises GeneralException)."""

    error_type = "MarginException"
    http_status = 400


class HoldingError(KiteError):
    """A delivery (CNC) sell of more than the account holds (the kiteconnect client raises GeneralException)."""

    error_type = "HoldingException"
    http_status = 400


class NetworkError(KiteError):
    """Too many requests (429) or the order system is unreachable (502, 503): retry later."""

    error_type = "NetworkException"
    http_status = 503


class GeneralError(KiteError):
    """Anything else (500, or 404 for an unknown route)."""


class RateLimitError(NetworkError):
    http_status = 429

    def __init__(self, message: str = "Too many requests"):
        super().__init__(message)


class ControlInputError(ValueError):
    """A bad request to the `/_sim/` control API; the message says what to fix."""
