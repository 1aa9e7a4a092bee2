"""Orders, their history and trades.

An order's life is the transition table below: every change appends one `OrderState` to the
order's history (what `GET /orders/{order_id}` lists), so an impossible move fails at one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from brokers.base import OrderStatus

S = OrderStatus
TERMINAL = frozenset({S.COMPLETE, S.REJECTED, S.CANCELLED})
MODIFIABLE = frozenset({S.OPEN, S.TRIGGER_PENDING, S.AMO_REQ_RECEIVED})

TRANSITIONS: dict[OrderStatus | None, frozenset[OrderStatus]] = {
    None: frozenset({S.PUT_ORDER_REQ_RECEIVED}),
    S.PUT_ORDER_REQ_RECEIVED: frozenset({S.VALIDATION_PENDING}),
    S.VALIDATION_PENDING: frozenset({S.OPEN_PENDING, S.AMO_REQ_RECEIVED, S.REJECTED}),
    S.OPEN_PENDING: frozenset({S.OPEN, S.TRIGGER_PENDING, S.REJECTED}),
    # OPEN -> OPEN is a partial fill; OPEN -> CANCELLED is an IOC order's unfilled rest.
    S.OPEN: frozenset({S.OPEN, S.COMPLETE, S.CANCELLED, S.MODIFY_VALIDATION_PENDING, S.CANCEL_PENDING}),
    S.TRIGGER_PENDING: frozenset({S.OPEN, S.MODIFY_VALIDATION_PENDING, S.CANCEL_PENDING}),
    S.AMO_REQ_RECEIVED: frozenset({S.MODIFY_VALIDATION_PENDING, S.CANCEL_PENDING}),
    S.MODIFY_VALIDATION_PENDING: frozenset({S.MODIFY_PENDING}),
    S.MODIFY_PENDING: frozenset({S.MODIFIED}),
    S.MODIFIED: frozenset({S.OPEN, S.TRIGGER_PENDING, S.AMO_REQ_RECEIVED}),
    S.CANCEL_PENDING: frozenset({S.CANCELLED}),
    S.COMPLETE: frozenset(),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
}

AVERAGE_PRICE_QUANTUM = Decimal("0.0001")


class IllegalTransition(RuntimeError):
    """A bug: the simulator tried to move an order where Kite never would."""


@dataclass(frozen=True)
class FillSettings:
    """How marketable orders fill. Each order keeps the settings in force when it was placed.

    `fill_ratio` below 1 fills that share of the quantity (rounded down) and then stops: the order
    stays OPEN with `filled_quantity` > 0 until cancelled.
    """

    delay_seconds: float = 0.02
    partial_fills: int = 1
    partial_interval_seconds: float = 0.02
    fill_ratio: Decimal = Decimal(1)

    def target_quantity(self, quantity: int) -> int:
        return int((quantity * self.fill_ratio).to_integral_value(rounding=ROUND_FLOOR))

    def chunk_quantity(self, target: int) -> int:
        return max(1, math.ceil(target / self.partial_fills))

    def as_json(self) -> dict[str, Any]:
        return {
            "delay_seconds": self.delay_seconds,
            "partial_fills": self.partial_fills,
            "partial_interval_seconds": self.partial_interval_seconds,
            "fill_ratio": str(self.fill_ratio),
        }


@dataclass(frozen=True, slots=True)
class OrderState:
    """One line of an order's history: everything about the order that can change."""

    status: OrderStatus
    order_type: str
    validity: str
    quantity: int
    disclosed_quantity: int
    price: Decimal
    trigger_price: Decimal
    order_timestamp: datetime
    filled_quantity: int = 0
    average_price: Decimal = Decimal(0)
    cancelled_quantity: int = 0
    status_message: str | None = None
    status_message_raw: str | None = None
    exchange_order_id: str | None = None
    exchange_timestamp: datetime | None = None
    exchange_update_timestamp: datetime | None = None
    modified: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def pending_quantity(self) -> int:
        """What is not filled; a CANCELLED order keeps it, as Kite's order book shows."""
        if self.status in (S.COMPLETE, S.REJECTED):
            return 0
        return self.quantity - self.filled_quantity


@dataclass(slots=True)
class Order:
    order_id: str
    api_key: str
    placed_by: str
    variety: str
    exchange: str
    tradingsymbol: str
    instrument_token: int
    transaction_type: str
    product: str
    market_protection: int
    tag: str | None
    guid: str
    fill_settings: FillSettings
    history: list[OrderState] = field(default_factory=list)
    # Matching state, not shown to clients.
    triggered: bool = False
    filled_value: Decimal = Decimal(0)
    modifications: int = 0
    # Margin blocked at placement for the part of the order that adds to exposure.
    blocked_margin: Decimal = Decimal(0)
    # The latest state as JSON, with the history length it was made at: GET /orders is polled hard.
    wire_cache: tuple[int, bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def state(self) -> OrderState:
        return self.history[-1]

    @property
    def is_buy(self) -> bool:
        return self.transaction_type == "BUY"

    @property
    def fill_target(self) -> int:
        return self.fill_settings.target_quantity(self.state.quantity)

    def start(self, state: OrderState) -> None:
        if self.history:
            raise IllegalTransition(f"order {self.order_id} already started")
        self.history.append(state)

    def advance(self, status: OrderStatus, **changes: Any) -> OrderState:
        """Append the next state; `changes` are the fields that change with it."""
        current = self.state
        if status not in TRANSITIONS[current.status]:
            raise IllegalTransition(f"order {self.order_id}: {current.status} -> {status}")
        new_state = replace(current, status=status, **changes)
        self.history.append(new_state)
        return new_state

    def average_price_after(self, filled_quantity: int) -> Decimal:
        return (self.filled_value / filled_quantity).quantize(AVERAGE_PRICE_QUANTUM)

    def outstanding_margin(self) -> Decimal:
        """The share of the blocked margin still held by the unfilled quantity."""
        state = self.state
        if state.is_terminal or state.quantity == 0:
            return Decimal(0)
        return self.blocked_margin * state.pending_quantity / state.quantity


@dataclass(frozen=True, slots=True)
class Trade:
    trade_id: str
    order_id: str
    api_key: str
    exchange: str
    tradingsymbol: str
    instrument_token: int
    product: str
    transaction_type: str
    quantity: int
    price: Decimal
    exchange_order_id: str
    fill_timestamp: datetime
