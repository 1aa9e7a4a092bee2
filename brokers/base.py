"""The broker-agnostic interface the engine uses, and the values that cross it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

# Terminal statuses are Kite's, and part of this interface too.
from engine.order_state import TERMINAL_STATUSES as TERMINAL_STATUSES
from engine.order_state import is_terminal as is_terminal


class OrderStatus(StrEnum):
    """Kite's order statuses. Anything not terminal is pending."""

    PUT_ORDER_REQ_RECEIVED = "PUT ORDER REQ RECEIVED"
    VALIDATION_PENDING = "VALIDATION PENDING"
    OPEN_PENDING = "OPEN PENDING"
    OPEN = "OPEN"
    TRIGGER_PENDING = "TRIGGER PENDING"
    MODIFY_VALIDATION_PENDING = "MODIFY VALIDATION PENDING"
    MODIFY_PENDING = "MODIFY PENDING"
    MODIFIED = "MODIFIED"
    CANCEL_PENDING = "CANCEL PENDING"
    AMO_REQ_RECEIVED = "AMO REQ RECEIVED"
    COMPLETE = "COMPLETE"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class OrderRequest:
    exchange: str
    tradingsymbol: str
    transaction_type: str  # BUY | SELL
    quantity: int
    product: str = "MIS"  # CNC | MIS | NRML | MTF
    order_type: str = "MARKET"  # MARKET | LIMIT | SL | SL-M
    tag: str | None = None
    variety: str = "regular"
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    validity: str = "DAY"
    market_protection: int | None = None


@dataclass(frozen=True)
class BrokerOrder:
    """One state of one order, as the broker reports it."""

    order_id: str
    status: str
    tradingsymbol: str
    exchange: str
    transaction_type: str
    order_type: str
    product: str
    variety: str
    quantity: int
    filled_quantity: int
    pending_quantity: int
    cancelled_quantity: int
    average_price: Decimal
    price: Decimal
    trigger_price: Decimal
    tag: str | None = None
    status_message: str | None = None
    order_timestamp: datetime | None = None
    exchange_update_timestamp: datetime | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_terminal(self) -> bool:
        return is_terminal(self.status)


@dataclass(frozen=True)
class Position:
    exchange: str
    tradingsymbol: str
    product: str
    quantity: int
    average_price: Decimal
    last_price: Decimal
    pnl: Decimal


@dataclass(frozen=True)
class BrokerTrade:
    """One fill of one order, from the day's trade book."""

    trade_id: str
    order_id: str
    exchange: str
    tradingsymbol: str
    product: str
    transaction_type: str
    quantity: int
    price: Decimal
    fill_timestamp: datetime | None = None


@dataclass(frozen=True)
class Holding:
    """Delivery shares in the demat account (CNC bought on earlier days), settled or not (T1)."""

    exchange: str
    tradingsymbol: str
    quantity: int  # settled and T1 together
    average_price: Decimal


class Broker(Protocol):
    """What the engine needs of a broker. Every method raises a `brokers.errors.BrokerError`."""

    async def place_order(self, request: OrderRequest, *, send_by: float | None = None) -> str:
        """Place one order; returns the broker's order id. Never retries on its own.

        `send_by` (a `time.monotonic()` moment): the request's send slot ends then; a request that
        would leave later is not sent (`SendSlotMissedError`)."""
        ...

    async def find_order_by_tag(self, tag: str) -> BrokerOrder | None:
        """The latest state of today's order carrying `tag`, or None."""
        ...

    async def orders(self) -> list[BrokerOrder]:
        """Today's order book: the latest state of every order."""
        ...

    async def order_status(self, order_id: str) -> BrokerOrder:
        """The latest state of one order."""
        ...

    async def order_history(self, order_id: str) -> list[BrokerOrder]:
        """Every state the order went through, oldest first."""
        ...

    async def cancel_order(self, order_id: str, variety: str = "regular", *, send_by: float | None = None) -> str:
        """Cancel what is not filled yet; `send_by` as for `place_order`."""
        ...

    async def modify_order(
        self,
        order_id: str,
        *,
        variety: str = "regular",
        quantity: int | None = None,
        price: Decimal | None = None,
        trigger_price: Decimal | None = None,
        order_type: str | None = None,
    ) -> str: ...

    async def positions(self) -> list[Position]: ...

    async def last_price(self, exchange: str, tradingsymbol: str) -> Decimal: ...

    async def trades(self) -> list[BrokerTrade]:
        """Today's trade book: every fill of every order, oldest first."""
        ...

    async def holdings(self) -> list[Holding]:
        """The demat holdings: CNC positions of earlier days land here."""
        ...
