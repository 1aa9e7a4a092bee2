"""Request and response bodies of the HTTP API: money as decimal strings, strict input."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)

from starter.deps import MAX_ID, OrderStatus, split_order_key
from starter.schedules import ScheduleView
from store.errors import InvalidInput
from store.history import decode_cursor
from store.records import HistoryOrder, OrderLogRecord, StrategyRecord

MAX_WAIT_SECONDS = 30.0
CENTS = Decimal("0.01")
API_KEY_SHAPE = re.compile(r"[A-Za-z0-9_\-]{1,200}")

# Wire types ------------------------------------------------------------------------------------------

# ASCII digits only: `\d` also matches other scripts' digits, and Decimal("२४५०") is 2450. Above zero: a price
# or a percentage of 0 is never meant.
MONEY_PATTERN = r"^(?=.*[1-9])[0-9]{1,7}(\.[0-9]{1,6})?$"
PERCENT_PATTERN = r"^(?=.*[1-9])[0-9]{1,2}(\.[0-9]{1,4})?$"
TIME_OF_DAY_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$"


def _decimal_text(pattern: str, example: str, shape: str) -> Callable[[Any], Any]:
    """Decimals travel as strings: a JSON number would pass through a float on many clients."""
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f'send a decimal string such as "{example}", not a JSON {type(value).__name__}')
        if not compiled.fullmatch(value):
            raise ValueError(f'send a plain decimal above zero such as "{example}": {shape}')
        return value

    return check


MoneyIn = Annotated[
    Decimal,
    BeforeValidator(_decimal_text(MONEY_PATTERN, "2450.50", "up to 7 digits, a point and up to 6 places")),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "examples": ["2450.50"]}),
]
PercentIn = Annotated[
    Decimal,
    BeforeValidator(_decimal_text(PERCENT_PATTERN, "1.5", "up to 2 digits, a point and up to 4 places")),
    WithJsonSchema({"type": "string", "pattern": PERCENT_PATTERN, "examples": ["1.5"]}),
]


def money_text(value: Decimal) -> str:
    """Plain notation with at least two places, whatever the Decimal's own exponent: 0 → "0.00"."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        value = value.quantize(CENTS)
    return format(value, "f")


MoneyOut = Annotated[
    Decimal,
    PlainSerializer(money_text, return_type=str, when_used="always"),
    WithJsonSchema({"type": "string", "examples": ["2450.50"]}),
]
# Printable text: control characters have no business in names and reasons (and PostgreSQL refuses NUL).
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=PRINTABLE)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=PRINTABLE)]
Symbol = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40, pattern=r"^[A-Za-z0-9&_.\-]+$")
]
# Strict numbers and flags: JSON `true` is not the quantity 1, nor "1" a number of seconds.
Id = Annotated[int, Field(gt=0, le=MAX_ID, strict=True)]
Quantity = Annotated[int, Field(gt=0, le=1_000_000, strict=True)]
WaitSeconds = Annotated[
    float, Field(ge=0, le=MAX_WAIT_SECONDS, strict=True, description="wait up to this long for the result")
]
Flag = Annotated[bool, Field(strict=True)]


def _time_of_day_text(value: Any) -> Any:
    """A time of day in Asia/Kolkata travels as "HH:MM" or "HH:MM:SS", without an offset."""
    if isinstance(value, time):
        return value
    if not isinstance(value, str) or not re.fullmatch(TIME_OF_DAY_PATTERN, value):
        raise ValueError('send a time of day in Asia/Kolkata such as "09:20" or "15:10:30", without an offset')
    return value


def _within_utc_range(value: datetime | None) -> datetime | None:
    if value is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("this moment falls outside the years 1-9999 once converted to UTC") from None
    return value


def _issued_cursor(value: str | None) -> str | None:
    if value is not None:
        try:
            decode_cursor(value)
        except InvalidInput as wrong:
            raise ValueError(str(wrong)) from None
    return value


HistoryMoment = Annotated[AwareDatetime | None, AfterValidator(_within_utc_range)]
HistoryCursor = Annotated[str | None, AfterValidator(_issued_cursor)]

TIME_OF_DAY_SCHEMA = {"type": "string", "pattern": TIME_OF_DAY_PATTERN, "examples": ["09:20:00"]}
TimeOfDayIn = Annotated[time, BeforeValidator(_time_of_day_text), WithJsonSchema(TIME_OF_DAY_SCHEMA)]
# What goes out is what `time.isoformat()` writes: "09:20:00", never an offset.
TimeOfDayOut = Annotated[time, WithJsonSchema({"type": "string", "examples": ["09:20:00"]})]
Exchange = Literal["NSE", "BSE", "NFO", "BFO", "CDS", "BCD", "MCX"]
Product = Literal["CNC", "MIS", "NRML", "MTF"]
WorkflowIdPath = Annotated[str, Path(min_length=1, max_length=200, description="e.g. order:12:3:entry")]
StrategyIdPath = Annotated[int, Path(gt=0, le=MAX_ID)]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    detail: str = Field(description="what went wrong and what to do")
    workflow_id: str | None = Field(default=None, description="the existing order workflow, for a duplicate")
    status: str | None = Field(default=None, description="that workflow's state, or what the order ended as")


class ManualOrderIn(StrictBody):
    strategy_id: Id
    order_type: Literal["BUY", "SELL"]
    reason: Text
    wait_seconds: WaitSeconds = 0


class StopLossIn(StrictBody):
    strategy_id: Id
    trigger_price: MoneyIn
    reason: Text | None = None
    wait_seconds: WaitSeconds = 0


class CancelIn(StrictBody):
    reason: Text = "cancelled through the API"
    wait_seconds: WaitSeconds = 10


class EmergencyStopIn(StrictBody):
    reason: Text
    square_off: Flag = Field(default=False, description="also sell every open position at market")
    all_users: Flag = Field(default=False, description="administrators only: stop every user's strategies")


class StrategyIn(StrictBody):
    name: Name
    broker_account_id: Id
    symbol: Symbol
    quantity: Quantity
    exchange: Exchange = "NSE"
    product: Product = "MIS"
    entry_time: TimeOfDayIn | None = Field(default=None, description="HH:MM[:SS], Asia/Kolkata; the daily BUY")
    exit_time: TimeOfDayIn | None = Field(default=None, description="HH:MM[:SS], Asia/Kolkata; the daily SELL")
    stop_loss_price: MoneyIn | None = None
    stop_loss_pct: PercentIn | None = None


class StrategyPatch(StrictBody):
    """Only the fields sent change; null clears an optional one (entry_time, exit_time, stop-loss)."""

    name: Name | None = None
    broker_account_id: Id | None = None
    symbol: Symbol | None = None
    quantity: Quantity | None = None
    exchange: Exchange | None = None
    product: Product | None = None
    entry_time: TimeOfDayIn | None = None
    exit_time: TimeOfDayIn | None = None
    stop_loss_price: MoneyIn | None = None
    stop_loss_pct: PercentIn | None = None


class ExitIn(StrictBody):
    reason: Text | None = None
    wait_seconds: WaitSeconds = 0


class StopIn(StrictBody):
    reason: Text = "stopped through the API"


class ScheduleOut(BaseModel):
    schedule_id: str
    leg: str
    at: TimeOfDayOut | None
    paused: bool
    note: str | None
    next_runs: list[datetime] = Field(description="the next times it fires, in Asia/Kolkata; none while paused")

    @classmethod
    def of(cls, view: ScheduleView) -> ScheduleOut:
        return cls(
            schedule_id=view.schedule_id, leg=view.leg.value, at=view.at, paused=view.paused, note=view.note,
            next_runs=view.next_runs,
        )


class StrategyOut(BaseModel):
    id: int
    name: str
    broker_account_id: int
    symbol: str
    exchange: str
    quantity: int
    product: str
    entry_time: TimeOfDayOut | None
    exit_time: TimeOfDayOut | None
    stop_loss_price: MoneyOut | None
    stop_loss_pct: MoneyOut | None
    status: str
    stop_reason: str | None
    stopped_at: datetime | None
    position: str
    open_quantity: int
    entry_price: MoneyOut | None
    entry_filled_at: datetime | None
    exit_price: MoneyOut | None
    exit_filled_at: datetime | None
    realized_pnl: MoneyOut
    position_cycle: int
    sl_triggered: bool
    sl_trigger_price: MoneyOut | None
    exit_reason: str | None
    needs_intervention: bool
    intervention_reason: str | None
    last_error: str | None
    last_action: str | None
    last_order_workflow_id: str | None
    active_order_workflow_id: str | None
    created_at: datetime
    updated_at: datetime
    schedules: list[ScheduleOut] | None = Field(
        default=None, description="the entry and exit schedules; null when not read (or Temporal unreachable)"
    )

    @classmethod
    def of(cls, record: StrategyRecord, schedules: list[ScheduleView] | None = None) -> StrategyOut:
        fields = {name: getattr(record, name) for name in cls.model_fields if hasattr(record, name)}
        fields["last_order_workflow_id"] = split_order_key(record.last_order_workflow_id)[0]
        fields["active_order_workflow_id"] = split_order_key(record.active_order_workflow_id)[0]
        fields["schedules"] = None if schedules is None else [ScheduleOut.of(view) for view in schedules]
        return cls(**fields)


class InterventionOut(BaseModel):
    strategy_id: int
    name: str
    symbol: str
    reason: str | None
    since: datetime | None
    last_error: str | None
    position: str
    open_quantity: int

    @classmethod
    def of(cls, record: StrategyRecord) -> InterventionOut:
        return cls(
            strategy_id=record.id, name=record.name, symbol=record.symbol, reason=record.intervention_reason,
            since=record.intervention_at, last_error=record.last_error, position=record.position,
            open_quantity=record.open_quantity,
        )


class RecordedOrderOut(BaseModel):
    """The order as the database holds it."""

    status: str
    broker_order_id: str | None
    tag: str
    quantity: int
    filled_quantity: int
    average_price: MoneyOut | None
    trigger_price: MoneyOut | None
    trigger_tick_at: datetime | None = Field(
        default=None, description="a stop-loss from the ticker: when the tick at trigger_price arrived"
    )
    outcome: str | None
    requested_by: str
    reason: str | None
    placed_at: datetime | None
    completed_at: datetime | None
    exit_reason: str | None = Field(
        default=None, description="an exit's: SCHEDULED_EXIT, STOP_LOSS, MANUAL, SQUARE_OFF or BROKER_SQUARE_OFF"
    )


class OrderStatusOut(BaseModel):
    workflow_id: str
    run_id: str
    workflow_status: str = Field(description="Temporal's: RUNNING, COMPLETED, FAILED, ...")
    strategy_id: int
    order_type: str | None
    stage: str | None = Field(description="validating, placing, following, cancelling, recording, done")
    broker_order_id: str | None
    broker_status: str | None
    quantity: int | None
    filled_quantity: int
    average_price: MoneyOut | None
    cancel_requested: bool
    outcome: str | None = Field(
        description="FILLED, PARTIALLY_FILLED, REJECTED, CANCELLED, INVALID, FAILED or UNRESOLVED"
    )
    message: str | None
    needs_intervention: bool
    answered_by: str = Field(description="workflow (live query), history (finished) or store")
    note: str | None
    started_at: datetime | None
    closed_at: datetime | None
    recorded: RecordedOrderOut | None

    @classmethod
    def of(cls, report: OrderStatus) -> OrderStatusOut:
        order = report.order
        recorded = None
        if order is not None:
            recorded = RecordedOrderOut(
                status=order.status, broker_order_id=order.broker_order_id, tag=order.tag, quantity=order.quantity,
                filled_quantity=order.filled_quantity, average_price=order.average_price,
                trigger_price=order.trigger_price, trigger_tick_at=order.trigger_tick_at, outcome=order.outcome,
                requested_by=order.requested_by,
                reason=order.reason, placed_at=order.placed_at, completed_at=order.completed_at,
                exit_reason=order.exit_reason,
            )
        return cls(
            workflow_id=report.workflow_id, run_id=report.run_id, workflow_status=report.workflow_status,
            strategy_id=report.strategy_id, order_type=report.order_type, stage=report.stage,
            broker_order_id=report.broker_order_id, broker_status=report.broker_status, quantity=report.quantity,
            filled_quantity=report.filled_quantity, average_price=report.average_price,
            cancel_requested=report.cancel_requested, outcome=report.outcome, message=report.message,
            needs_intervention=report.needs_intervention, answered_by=report.answered_by, note=report.note,
            started_at=report.started_at, closed_at=report.closed_at, recorded=recorded,
        )


class OrderAcceptedOut(BaseModel):
    workflow_id: str
    status_url: str
    cancel_url: str
    status: OrderStatusOut | None = Field(default=None, description="present when the request waited")


class CancelOut(BaseModel):
    workflow_id: str
    accepted: bool | None = Field(description="null: asked, the broker has not answered yet")
    message: str


class HistoryItemOut(BaseModel):
    id: int
    workflow_id: str | None
    run_id: str | None
    strategy_id: int
    order_type: str
    status: str = Field(description="ATTEMPTING, SUCCESS, FAILED or ERROR")
    order_data: dict[str, Any]
    result: dict[str, Any] | None
    error_message: str | None
    attempted_at: datetime
    completed_at: datetime | None
    execution_time_ms: int | None
    symbol: str | None = None
    side: str | None = Field(default=None, description="BUY or SELL at the broker")
    quantity: int | None = None
    filled_quantity: int | None = None
    average_price: MoneyOut | None = None
    exit_reason: str | None = Field(default=None, description="an exit's reason; null for a BUY")

    @classmethod
    def of(cls, record: OrderLogRecord, order: HistoryOrder | None = None) -> HistoryItemOut:
        workflow_id, run_id = split_order_key(record.workflow_id)
        item = cls(
            id=record.id, workflow_id=workflow_id, run_id=run_id, strategy_id=record.strategy_id,
            order_type=record.order_type, status=record.status, order_data=record.order_data, result=record.result,
            error_message=record.error_message, attempted_at=record.attempted_at, completed_at=record.completed_at,
            execution_time_ms=record.execution_time_ms,
        )
        if order is not None:
            item.symbol, item.side, item.quantity = order.symbol, order.side, order.quantity
            item.filled_quantity, item.average_price = order.filled_quantity, order.average_price
            item.exit_reason = order.exit_reason
        return item


class HistoryPageOut(BaseModel):
    items: list[HistoryItemOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null on the last")


class EmergencyStopOut(BaseModel):
    workflow_id: str
    message: str


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    temporal: str
    schema_revision: str | None = Field(description="the database's migration revision; null if never migrated")
    schema_head: str = Field(description="the newest revision this engine knows; behind it, health fails")
