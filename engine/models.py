"""Payloads of the order workflow and its activities: one pydantic model in, one out.

They travel through Temporal's history in plain form (or encrypted by the payload codec): they never
hold credentials. Activities look credentials up by broker account.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field

from engine.ids import OrderType


class OrderIntent(BaseModel):
    """What a caller asks for: the workflow's input."""

    strategy_id: int
    user_id: int
    order_type: OrderType
    trigger_price: Decimal | None = None
    # A stop-loss from the ticker: when the tick that crossed the stop arrived (its price is trigger_price).
    trigger_tick_at: datetime | None = None
    requested_by: str = "system"
    reason: str | None = None
    # Set only by the emergency stop and an operator's exit: a SELL of a STOPPED strategy's open position.
    square_off: bool = False
    # Why an exit is sent (store.ExitReason: SCHEDULED_EXIT, STOP_LOSS, MANUAL, SQUARE_OFF, ...); None:
    # its order type's default.
    exit_reason: str | None = None


class Outcome(StrEnum):
    FILLED = "FILLED"  # completely filled
    PARTIALLY_FILLED = "PARTIALLY_FILLED"  # some filled, the rest cancelled or timed out
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"  # cancelled with nothing filled
    INVALID = "INVALID"  # refused by validation; nothing reached the broker
    FAILED = "FAILED"  # placement failed after retries; nothing reached the broker
    UNRESOLVED = "UNRESOLVED"  # the broker never confirmed a final state: a person must look


# Outcomes after which nothing of the order is live at the broker and nothing was filled: the intent
# may be tried again under the same workflow id.
RETRYABLE_OUTCOMES = frozenset({Outcome.REJECTED, Outcome.CANCELLED, Outcome.INVALID, Outcome.FAILED})


class BeginOrder(BaseModel):
    intent: OrderIntent
    workflow_id: str
    run_id: str
    order_key: str
    tag: str


class OrderPolicy(BaseModel):
    """The worker's order settings, recorded in history with the ticket so that replays agree."""

    timeout_seconds: float
    retry_attempts: int
    poll_interval_seconds: float
    broker_timeout_seconds: float
    market_protection: int | None = None
    twin_watch_seconds: float = 120.0
    # A follower silent this long is taken for dead and its attempt retried elsewhere.
    follow_heartbeat_timeout_seconds: float = 30.0


class OrderTicket(BaseModel):
    """What validation established: everything later steps need to act on the order."""

    order_key: str
    strategy_id: int
    broker_account_id: int
    symbol: str
    exchange: str
    transaction_type: str
    quantity: int
    product: str
    tag: str
    policy: OrderPolicy
    order_type: str | None = None  # BUY, SELL or SL_SELL: how long a re-send waits depends on it


class PlaceOrder(BaseModel):
    ticket: OrderTicket


class Placement(BaseModel):
    broker_order_id: str
    adopted: bool = Field(description="found in the order book by tag instead of placed by this attempt")
    # An earlier request for this order may have reached the broker too: its tag is watched for a twin.
    resent: bool = False


class BegunOrder(BaseModel):
    """The fast path's answer: the order validated, recorded and placed in one step."""

    ticket: OrderTicket
    placement: Placement
    # The final state when the order filled (or ended) at once: no follower needed.
    state: BrokerOrderState | None = None
    placed_at: datetime | None = None  # when the broker's answer came (the fill wait began)


class BrokerOrderState(BaseModel):
    order_id: str
    status: str
    quantity: int
    filled_quantity: int
    pending_quantity: int
    average_price: Decimal
    status_message: str | None = None


class FollowOrder(BaseModel):
    ticket: OrderTicket
    broker_order_id: str
    deadline: datetime
    poll_interval_seconds: float
    last_known: BrokerOrderState | None = None


class FollowResult(BaseModel):
    state: BrokerOrderState
    timed_out: bool = False
    twins: list[str] = Field(default_factory=list)  # other broker orders seen under the order's tag


class WatchTwins(BaseModel):
    """After an order sent more than once ended: its tag watched for a twin until `until`."""

    ticket: OrderTicket
    order_key: str
    order_type: OrderType
    strategy_id: int
    user_id: int
    broker_order_id: str
    until: datetime
    known_twins: list[str] = Field(default_factory=list)


class SweepTwins(BaseModel):
    ticket: OrderTicket
    order_key: str
    broker_order_id: str


class FinishTwin(BaseModel):
    ticket: OrderTicket
    order_key: str
    broker_order_id: str  # the order's own
    twin: BrokerOrderState


class CancelAtBroker(BaseModel):
    ticket: OrderTicket
    broker_order_id: str


class CancelAnswer(BaseModel):
    accepted: bool
    message: str


class FinishOrder(BaseModel):
    ticket: OrderTicket | None
    order_key: str
    strategy_id: int
    order_type: OrderType
    outcome: Outcome
    state: BrokerOrderState | None = None
    error: str | None = None
    needs_intervention: bool = False
    intervention_reason: str | None = None


class OrderResult(BaseModel):
    """The workflow's result (and, inside its failure, the details of a failed order)."""

    workflow_id: str
    order_key: str
    order_type: OrderType
    strategy_id: int
    outcome: Outcome
    broker_order_id: str | None = None
    requested_quantity: int = 0
    filled_quantity: int = 0
    average_price: Decimal | None = None
    message: str | None = None
    needs_intervention: bool = False


class AlertLevel(StrEnum):
    INFO = "INFO"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


class Alert(BaseModel):
    level: AlertLevel
    title: str
    message: str
    strategy_id: int | None = None
    user_id: int | None = None
    workflow_id: str | None = None
    created_at: datetime | None = None


class OrderStatusView(BaseModel):
    """What the workflow's status query answers."""

    workflow_id: str
    order_type: OrderType
    strategy_id: int
    stage: str
    broker_order_id: str | None = None
    status: str | None = None
    filled_quantity: int = 0
    quantity: int = 0
    average_price: Decimal | None = None
    cancel_requested: bool = False
    result: OrderResult | None = None
