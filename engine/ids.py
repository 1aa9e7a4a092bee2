"""Identifiers: workflow ids that de-duplicate intents, and the broker tags that find orders again."""

from __future__ import annotations

import base64
import hashlib
from enum import StrEnum

TAG_LENGTH = 20  # Kite: alphanumeric, at most 20 characters


class OrderType(StrEnum):
    BUY = "BUY"
    SELL = "SELL"
    SL_SELL = "SL_SELL"

    @property
    def leg(self) -> str:
        """SELL and SL_SELL share the exit leg, so they can never both reach the broker."""
        return "entry" if self is OrderType.BUY else "exit"

    @property
    def transaction_type(self) -> str:
        return "BUY" if self is OrderType.BUY else "SELL"


def order_workflow_id(strategy_id: int, cycle: int, order_type: OrderType, remainder: int | None = None) -> str:
    """One id per leg of one position cycle: a repeated trigger of the same intent collides here.

    An exit after a partial exit sells what is left: its id names that remainder (`exit-5`), so the
    remainder can always be sold, once; it only shrinks within a cycle, so no id comes back."""
    if remainder is not None and order_type is not OrderType.BUY:
        return f"order:{strategy_id}:{cycle}:{order_type.leg}-{remainder}"
    return f"order:{strategy_id}:{cycle}:{order_type.leg}"


def order_key(workflow_id: str, run_id: str) -> str:
    """The store's key for one order: one run of an order workflow.

    A new run of the same workflow id is only allowed after a failed one, and it is a new order.
    """
    return f"{workflow_id}/{run_id}"


def broker_tag(key: str) -> str:
    """A deterministic Kite tag for an order key: 20 upper-case alphanumerics, 'E' first."""
    digest = hashlib.sha256(key.encode()).digest()
    encoded = base64.b32encode(digest).decode().rstrip("=")
    return ("E" + encoded)[:TAG_LENGTH]
