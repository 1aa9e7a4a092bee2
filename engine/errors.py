"""Errors of the order path that callers see, each saying what went wrong and what to do."""

from __future__ import annotations


class ValidationFailed(Exception):
    """An order refused before it reached the broker. Never retried: the same input fails again."""


class DuplicateOrderError(Exception):
    """The same intent was already triggered: no second order is made."""

    def __init__(self, workflow_id: str, status: str):
        super().__init__(
            f"duplicate order: workflow {workflow_id} already handles this intent (it is {status}); "
            "no second order was sent"
        )
        self.workflow_id = workflow_id
        self.status = status


# Temporal ApplicationError types raised by activities; the workflow tells them apart by name.
VALIDATION_FAILED = "ValidationFailed"
ORDER_IN_FLIGHT = "OrderInFlight"
BROKER_REFUSED = "BrokerRefused"
SESSION_EXPIRED = "SessionExpired"
BROKER_AMBIGUOUS = "BrokerAmbiguous"
RATE_LIMITED = "RateLimited"
# The strategy was stopped between an entry's validation and its send: nothing left for the broker.
ENTRY_STOPPED = "EntryStopped"
NOT_RETRYABLE = (VALIDATION_FAILED, ORDER_IN_FLIGHT, BROKER_REFUSED, SESSION_EXPIRED)
