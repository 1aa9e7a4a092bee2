"""Values that cross the store's boundary: frozen, detached from any session, safe to log."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from decimal import Decimal
from enum import StrEnum
from typing import Any


class StrategyStatus(StrEnum):
    STOPPED = "STOPPED"
    RUNNING = "RUNNING"
    SL_TRIGGERED = "SL_TRIGGERED"


class PositionSide(StrEnum):
    FLAT = "FLAT"
    LONG = "LONG"


class OrderType(StrEnum):
    BUY = "BUY"
    SELL = "SELL"
    SL_SELL = "SL_SELL"

    @property
    def transaction_type(self) -> str:
        return "BUY" if self is OrderType.BUY else "SELL"


class LogStatus(StrEnum):
    """Status of an `order_logs` row."""

    ATTEMPTING = "ATTEMPTING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    ERROR = "ERROR"


class ExitReason(StrEnum):
    """Why an exit was sent; the strategy keeps the reason of the exit that closed its position."""

    STOP_LOSS = "STOP_LOSS"
    SCHEDULED_EXIT = "SCHEDULED_EXIT"  # the strategy's exit schedule, or the engine's own routine exit
    MANUAL = "MANUAL"  # a person, through the API or the CLI
    SQUARE_OFF = "SQUARE_OFF"  # an emergency stop's square-off
    BROKER_SQUARE_OFF = "BROKER_SQUARE_OFF"  # the broker's own square-off (Kite's MIS close), found by reconciling

    @classmethod
    def default_for(cls, order_type: str) -> ExitReason | None:
        if order_type == "SL_SELL":
            return cls.STOP_LOSS
        return cls.SCHEDULED_EXIT if order_type == "SELL" else None


class OrderEventType(StrEnum):
    ATTEMPTED = "ATTEMPTED"
    PLACEMENT_SENT = "PLACEMENT_SENT"
    PLACEMENT_NOT_SENT = "PLACEMENT_NOT_SENT"
    PLACED = "PLACED"
    ADOPTED = "ADOPTED"
    STATUS = "STATUS"
    FILL_APPLIED = "FILL_APPLIED"
    # More of an order's fill, applied later (an unresolved order settled from the broker's record).
    FILL_ADDED = "FILL_ADDED"
    SETTLED = "SETTLED"
    # A second broker order under one order's tag; on both the order and the twin's own row.
    TWIN_FOUND = "TWIN_FOUND"
    # Written by finish_order in the same transaction as the result: the outbox of order-executed events.
    ORDER_EXECUTED = "ORDER_EXECUTED"


class StrategyEventType(StrEnum):
    SETTINGS_CHANGED = "SETTINGS_CHANGED"
    STATUS_CHANGED = "STATUS_CHANGED"


@dataclass(frozen=True)
class StrategyChange:
    """One event that may change a strategy's stop-loss: from order_events (source "order") or
    strategy_events (source "strategy"), with the id to follow each table by."""

    source: str
    id: int
    strategy_id: int
    event_type: str
    order_type: str | None = None
    outcome: str | None = None


# Internal order statuses before the broker has reported one.
ORDER_STATUS_NEW = "NEW"
ORDER_STATUS_PLACED = "PLACED"


@dataclass(frozen=True)
class UserRecord:
    id: int
    username: str
    is_admin: bool
    api_key_prefix: str
    created_at: datetime


@dataclass(frozen=True)
class BrokerAccountRecord:
    """A broker account without its secrets."""

    id: int
    user_id: int
    broker: str
    has_access_token: bool
    token_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    token_issued_at: datetime | None = None
    broker_user_id: str | None = None
    logged_out_at: datetime | None = None
    logged_out_reason: str | None = None

    def logged_in_at(self, now: datetime) -> bool:
        """Whether the account holds a token that has not expired at `now`."""
        return self.has_access_token and (self.token_expires_at is None or self.token_expires_at > now)


@dataclass(frozen=True)
class BrokerCredentials:
    """What a broker client needs for the day. The repr leaves out the key and the token."""

    account_id: int
    broker: str
    api_key: str = field(repr=False)
    access_token: str = field(repr=False)
    token_expires_at: datetime | None


@dataclass(frozen=True)
class BrokerAppCredentials:
    """The app's key and secret, needed only to turn a login's request token into an access token."""

    account_id: int
    broker: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)


@dataclass(frozen=True)
class StrategySpec:
    """The configuration of a new strategy."""

    user_id: int
    broker_account_id: int
    name: str
    symbol: str
    quantity: int
    exchange: str = "NSE"
    product: str = "MIS"
    entry_time: time | None = None
    exit_time: time | None = None
    stop_loss_price: Decimal | None = None
    stop_loss_pct: Decimal | None = None


@dataclass(frozen=True)
class StrategyRecord:
    id: int
    user_id: int
    broker_account_id: int
    name: str
    symbol: str
    exchange: str
    quantity: int
    product: str
    entry_time: time | None
    exit_time: time | None
    stop_loss_price: Decimal | None
    stop_loss_pct: Decimal | None
    status: str
    stop_reason: str | None
    stopped_at: datetime | None
    position: str
    open_quantity: int
    entry_price: Decimal | None
    entry_filled_at: datetime | None
    exit_price: Decimal | None
    exit_filled_at: datetime | None
    realized_pnl: Decimal
    position_cycle: int
    sl_triggered: bool
    sl_trigger_price: Decimal | None
    exit_reason: str | None
    needs_intervention: bool
    intervention_reason: str | None
    intervention_at: datetime | None
    intervention_cleared_by: str | None
    intervention_cleared_at: datetime | None
    last_error: str | None
    last_action: str | None
    last_order_workflow_id: str | None
    active_order_workflow_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def is_running(self) -> bool:
        return self.status == StrategyStatus.RUNNING

    @property
    def has_open_position(self) -> bool:
        return self.open_quantity > 0


@dataclass(frozen=True)
class NewOrder:
    """An order workflow's intent, recorded before anything goes to the broker."""

    workflow_id: str
    strategy_id: int
    user_id: int
    order_type: str  # BUY | SELL | SL_SELL
    transaction_type: str  # BUY | SELL, as the broker sees it
    quantity: int
    symbol: str
    exchange: str
    tag: str
    requested_by: str
    reason: str | None = None
    trigger_price: Decimal | None = None
    order_data: dict[str, Any] = field(default_factory=dict)
    # When the attempt started; the time of the call when not given.
    attempted_at: datetime | None = None
    # An exit's reason (ExitReason); its order type's default when not given. None for a BUY.
    exit_reason: str | None = None
    # A stop-loss exit: when the tick that crossed the stop arrived.
    trigger_tick_at: datetime | None = None


@dataclass(frozen=True)
class OrderRecord:
    id: int
    workflow_id: str
    strategy_id: int
    user_id: int
    order_type: str
    transaction_type: str
    quantity: int
    symbol: str
    exchange: str
    tag: str
    trigger_price: Decimal | None
    requested_by: str
    reason: str | None
    broker_order_id: str | None
    adopted: bool
    status: str
    filled_quantity: int
    average_price: Decimal | None
    broker_updated_at: datetime | None
    outcome: str | None
    created_at: datetime
    placement_sent_at: datetime | None
    placed_at: datetime | None
    filled_at: datetime | None
    fill_applied_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    applied_quantity: int = 0
    applied_average_price: Decimal | None = None
    exit_reason: str | None = None
    trigger_tick_at: datetime | None = None

    @property
    def is_finished(self) -> bool:
        return self.outcome is not None


@dataclass(frozen=True)
class Fill:
    """The final fill of one order, as the broker reported it."""

    workflow_id: str
    filled_quantity: int
    average_price: Decimal
    status: str
    filled_at: datetime


@dataclass(frozen=True)
class OrderLogRecord:
    id: int
    order_id: int
    workflow_id: str
    user_id: int
    strategy_id: int
    order_type: str
    order_data: dict[str, Any]
    status: str
    result: dict[str, Any] | None
    error_message: str | None
    attempted_at: datetime
    completed_at: datetime | None
    execution_time_ms: int | None


@dataclass(frozen=True)
class OrderEventRecord:
    id: int
    order_id: int
    workflow_id: str
    event_type: str
    data: dict[str, Any]
    created_at: datetime
    published_at: datetime | None


@dataclass(frozen=True)
class HistoryQuery:
    """Filters for the audit log. `since` is inclusive, `until` exclusive; both on attempted_at."""

    user_id: int | None = None
    strategy_id: int | None = None
    status: str | None = None
    order_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True)
class HistoryOrder:
    """What a history row's order is: instrument, side, size, fill and why it was sent."""

    symbol: str
    exchange: str
    side: str  # BUY | SELL at the broker
    quantity: int
    filled_quantity: int
    average_price: Decimal | None
    exit_reason: str | None


@dataclass(frozen=True)
class Page:
    items: list[OrderLogRecord]
    next_cursor: str | None
    # The order of each item, by order id.
    orders: dict[int, HistoryOrder] = field(default_factory=dict)
