"""The HTTP API: orders, stop-loss triggers, status, cancel, history, emergency stop, interventions and
strategies, each user on his own strategies and orders only.

    uvicorn starter.api:app

Authentication: `Authorization: Bearer <API key>` (keys are issued by `engine users create` and stored
hashed). Another user's strategy or order answers 404, exactly like one that does not exist. Errors
are `{"detail": "what to do"}` with 400 (bad value), 401 (no or unknown key), 403, 404, 409 (duplicate
or state conflict), 422 (malformed request), 502 (the broker refused or failed), 503 (Temporal or the
database unreachable). Money goes in and out as decimal strings. OpenAPI docs at /docs.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateRPCTimeoutOrCancelledError

from engine.errors import DuplicateOrderError
from engine.ids import OrderType
from engine.models import Outcome
from engine.settings import Settings
from starter.control import (
    EmergencyStopRefused,
    EmergencyStopUnconfirmed,
    InvalidControlRequest,
    OrderAlreadyFinished,
    UnknownOrder,
    start_emergency_stop,
)
from starter.deps import (
    MAX_ID,
    OrderStatus,
    Services,
    StrategyNotRunning,
    TemporalUnavailable,
    split_order_key,
    strategy_id_of,
    temporal_call,
)
from starter.orders import NothingToExit
from starter.schedules import ScheduleView
from store import Store
from store.errors import (
    ConcurrentUpdate,
    InvalidInput,
    NotFound,
    OrderInFlight,
    StoreUnavailable,
    StrategyNotFound,
)
from store.records import HistoryQuery, OrderLogRecord, StrategyRecord, StrategySpec, UserRecord

MAX_WAIT_SECONDS = 30.0
CENTS = Decimal("0.01")
API_KEY_SHAPE = re.compile(r"[A-Za-z0-9_\-]{1,200}")

# Wire types ------------------------------------------------------------------------------------------

MONEY_PATTERN = r"^\d{1,7}(\.\d{1,6})?$"
PERCENT_PATTERN = r"^\d{1,2}(\.\d{1,4})?$"


def _decimal_text(pattern: str, example: str, shape: str) -> Callable[[Any], Any]:
    """Decimals travel as strings: a JSON number would pass through a float on many clients."""
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f'send a decimal string such as "{example}", not a JSON {type(value).__name__}')
        if not compiled.fullmatch(value):
            raise ValueError(f'send a plain decimal such as "{example}": {shape}')
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
Id = Annotated[int, Field(gt=0, le=MAX_ID)]
Quantity = Annotated[int, Field(gt=0, le=1_000_000)]
WaitSeconds = Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS, description="wait up to this long for the result")]
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
    square_off: bool = Field(default=False, description="also sell every open position at market")
    all_users: bool = Field(default=False, description="administrators only: stop every user's strategies")


class StrategyIn(StrictBody):
    name: Name
    broker_account_id: Id
    symbol: Symbol
    quantity: Quantity
    exchange: Exchange = "NSE"
    product: Product = "MIS"
    entry_time: time | None = Field(default=None, description="HH:MM[:SS], Asia/Kolkata; the daily BUY")
    exit_time: time | None = Field(default=None, description="HH:MM[:SS], Asia/Kolkata; the daily SELL")
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
    entry_time: time | None = None
    exit_time: time | None = None
    stop_loss_price: MoneyIn | None = None
    stop_loss_pct: PercentIn | None = None


class StopIn(StrictBody):
    reason: Text = "stopped through the API"


class ScheduleOut(BaseModel):
    schedule_id: str
    leg: str
    at: time | None
    paused: bool
    note: str | None
    next_runs: list[datetime]

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
    entry_time: time | None
    exit_time: time | None
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
                trigger_price=order.trigger_price, outcome=order.outcome, requested_by=order.requested_by,
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

    @classmethod
    def of(cls, record: OrderLogRecord) -> HistoryItemOut:
        workflow_id, run_id = split_order_key(record.workflow_id)
        return cls(
            id=record.id, workflow_id=workflow_id, run_id=run_id, strategy_id=record.strategy_id,
            order_type=record.order_type, status=record.status, order_data=record.order_data, result=record.result,
            error_message=record.error_message, attempted_at=record.attempted_at, completed_at=record.completed_at,
            execution_time_ms=record.execution_time_ms,
        )


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


# Errors ----------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success, with what to do about it."""

    def __init__(
        self, status_code: int, detail: str, *, headers: dict[str, str] | None = None, **extra: str | None
    ):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers
        self.extra = extra


def _error(status_code: int, detail: str, headers: dict[str, str] | None = None, **extra: str | None) -> JSONResponse:
    body = ErrorOut(detail=detail, **extra).model_dump(exclude_none=True)
    return JSONResponse(status_code=status_code, content=body, headers=headers)


def _validation_message(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "request"
    return f"{where}: {error.get('msg', 'invalid')}"


def install_error_handlers(app: FastAPI) -> None:
    def handler(
        exc_type: type[Exception], respond: Callable[[Any], JSONResponse]
    ) -> None:
        async def handle(_: Request, exc: Exception) -> JSONResponse:
            return respond(exc)

        app.add_exception_handler(exc_type, handle)

    handler(ApiError, lambda exc: _error(exc.status_code, exc.detail, exc.headers, **exc.extra))
    handler(
        RequestValidationError,
        lambda exc: _error(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "fix the request: " + "; ".join(_validation_message(error) for error in exc.errors()[:10]),
        ),
    )
    handler(
        DuplicateOrderError,
        lambda exc: _error(status.HTTP_409_CONFLICT, str(exc), workflow_id=exc.workflow_id, status=exc.status),
    )
    handler(
        OrderAlreadyFinished,
        lambda exc: _error(status.HTTP_409_CONFLICT, str(exc), workflow_id=exc.workflow_id, status=exc.outcome),
    )
    handler(
        OrderInFlight,
        lambda exc: _error(status.HTTP_409_CONFLICT, str(exc), workflow_id=split_order_key(exc.active_workflow_id)[0]),
    )
    handler(
        StrategyNotRunning,
        lambda exc: _error(status.HTTP_409_CONFLICT, str(exc), status=exc.status),
    )
    handler(ConcurrentUpdate, lambda exc: _error(status.HTTP_409_CONFLICT, f"{exc}; send the request again"))
    handler(UnknownOrder, lambda exc: _error(status.HTTP_404_NOT_FOUND, str(exc)))
    handler(InvalidControlRequest, lambda exc: _error(status.HTTP_400_BAD_REQUEST, str(exc)))
    handler(EmergencyStopRefused, lambda exc: _error(status.HTTP_409_CONFLICT, str(exc)))
    handler(
        EmergencyStopUnconfirmed,
        lambda exc: _error(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "5"}, workflow_id=exc.workflow_id
        ),
    )
    handler(
        WorkflowUpdateRPCTimeoutOrCancelledError,
        lambda exc: _error(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "Temporal did not answer in time; the request may still take effect: check, then retry",
            headers={"Retry-After": "5"},
        ),
    )
    handler(NotFound, lambda exc: _error(status.HTTP_404_NOT_FOUND, str(exc)))
    handler(InvalidInput, lambda exc: _error(status.HTTP_400_BAD_REQUEST, str(exc)))
    handler(
        TemporalUnavailable,
        lambda exc: _error(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "5"}),
    )
    handler(
        StoreUnavailable,
        lambda exc: _error(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc}; the database is unreachable, retry shortly",
            headers={"Retry-After": "5"},
        ),
    )
    # Anything else is a bug: the same shape of answer, and the traceback in the server's log.
    handler(
        Exception,
        lambda exc: _error(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            f"the API failed unexpectedly ({type(exc).__name__}); the server log has the details, please report it",
        ),
    )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 409, 422, 503)
}
ORDER_RESPONSES: dict[int | str, dict[str, Any]] = {**ERROR_RESPONSES, 502: {"model": ErrorOut}}


# Dependencies ----------------------------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, description="the API key from `engine users create`")


def services_of(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, "the API is starting; retry in a moment")
    return services


ServicesDep = Annotated[Services, Depends(services_of)]


async def current_user(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> UserRecord:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED, "send your API key as `Authorization: Bearer <key>`", headers=challenge
        )
    key = credentials.credentials
    user = await services.store.user_by_api_key(key) if API_KEY_SHAPE.fullmatch(key) else None
    if user is None:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED, "that API key is not valid; ask an operator for a new one", headers=challenge
        )
    return user


UserDep = Annotated[UserRecord, Depends(current_user)]


async def owned_strategy(services: Services, user: UserRecord, strategy_id: int) -> StrategyRecord:
    """The user's strategy; another user's answers exactly like a missing one."""
    strategy = await services.store.get_strategy(strategy_id)
    if strategy.user_id != user.id:
        raise StrategyNotFound(strategy_id)
    return strategy


async def owned_order(services: Services, user: UserRecord, workflow_id: str) -> int:
    """The strategy id of the user's order workflow; UnknownOrder for anyone else's."""
    strategy_id = strategy_id_of(workflow_id)
    if strategy_id is None:
        raise UnknownOrder(workflow_id)
    try:
        await owned_strategy(services, user, strategy_id)
    except StrategyNotFound:
        raise UnknownOrder(workflow_id) from None
    return strategy_id


def requested_by(user: UserRecord) -> str:
    return f"api:{user.username}"[:64]


# The app ---------------------------------------------------------------------------------------------


def create_app(
    settings: Settings | None = None,
    client: Client | None = None,
    store: Store | None = None,
    *,
    temporal_address: str | None = None,
) -> FastAPI:
    """The API. With settings, client and store all given it is ready at once (tests); otherwise its
    lifespan builds what is missing from the environment (Settings(), DATABASE_URL, TEMPORAL_*)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = None
        if getattr(app.state, "services", None) is None:
            opened = await Services.open(settings, client=client, store=store, temporal_address=temporal_address)
            app.state.services = opened
        try:
            yield
        finally:
            if opened is not None:
                app.state.services = None
                await opened.close()

    app = FastAPI(
        title="Execution engine API",
        version="1.0",
        summary="Orders, strategies and controls of the order execution engine (NSE/BSE through Kite).",
        description=__doc__,
        lifespan=lifespan,
    )
    if settings is not None and client is not None and store is not None:
        app.state.services = Services.assemble(settings, client, store)
    install_error_handlers(app)
    _add_order_routes(app)
    _add_control_routes(app)
    _add_strategy_routes(app)
    _add_strategy_exit_route(app)
    _add_health_route(app)
    return app


def _accepted(workflow_id: str) -> OrderAcceptedOut:
    return OrderAcceptedOut(
        workflow_id=workflow_id,
        status_url=f"/execution/order/{workflow_id}/status",
        cancel_url=f"/execution/order/{workflow_id}/cancel",
    )


async def _answer_after_waiting(services: Services, workflow_id: str, wait_seconds: float) -> JSONResponse:
    """202 while in flight; 200 once filled or cancelled; 409 refused by validation; 502 the broker."""
    accepted = _accepted(workflow_id)
    if wait_seconds > 0:
        try:
            await temporal_call(
                "wait for the order",
                services.order_handle(workflow_id).result(),
                timeout=timedelta(seconds=wait_seconds),
            )
        except WorkflowFailureError:
            pass  # the order's outcome is in its status, read next
        except TemporalUnavailable:
            pass  # waited long enough: answer with what there is
        report = await services.order_status(workflow_id)
        accepted.status = OrderStatusOut.of(report)
        if report.outcome == Outcome.INVALID.value:
            raise ApiError(status.HTTP_409_CONFLICT, report.message or "the order was refused", workflow_id=workflow_id)
        if report.outcome in (Outcome.REJECTED.value, Outcome.FAILED.value, Outcome.UNRESOLVED.value):
            raise ApiError(
                status.HTTP_502_BAD_GATEWAY,
                f"the broker did not fill the order ({report.outcome}): {report.message or 'no reason given'}; "
                "check the account at the broker before trying again",
                workflow_id=workflow_id,
                status=report.outcome,
            )
        if report.finished:
            return JSONResponse(status_code=status.HTTP_200_OK, content=accepted.model_dump(mode="json"))
    return JSONResponse(status_code=status.HTTP_202_ACCEPTED, content=accepted.model_dump(mode="json"))


def _add_order_routes(app: FastAPI) -> None:
    @app.post(
        "/execution/order",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=OrderAcceptedOut,
        responses={**ORDER_RESPONSES, 200: {"model": OrderAcceptedOut, "description": "waited: the order ended"}},
        tags=["orders"],
        summary="Place a manual BUY or SELL for a strategy",
    )
    async def place_order(body: ManualOrderIn, services: ServicesDep, user: UserDep) -> JSONResponse:
        strategy = await owned_strategy(services, user, body.strategy_id)
        handle = await services.place_order(
            strategy, OrderType(body.order_type), requested_by=requested_by(user), reason=body.reason,
            how_to_start=f"POST /strategies/{strategy.id}/start",
        )
        return await _answer_after_waiting(services, handle.id, body.wait_seconds)

    @app.post(
        "/execution/stop-loss",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=OrderAcceptedOut,
        responses={**ORDER_RESPONSES, 200: {"model": OrderAcceptedOut, "description": "waited: the order ended"}},
        tags=["orders"],
        summary="Trigger a strategy's stop-loss (SL_SELL at market)",
    )
    async def trigger_stop_loss(body: StopLossIn, services: ServicesDep, user: UserDep) -> JSONResponse:
        strategy = await owned_strategy(services, user, body.strategy_id)
        handle = await services.place_order(
            strategy, OrderType.SL_SELL, trigger_price=body.trigger_price, requested_by=requested_by(user),
            reason=body.reason, how_to_start=f"POST /strategies/{strategy.id}/start",
        )
        return await _answer_after_waiting(services, handle.id, body.wait_seconds)

    @app.get(
        "/execution/order/{workflow_id}/status",
        response_model=OrderStatusOut,
        responses=ERROR_RESPONSES,
        tags=["orders"],
        summary="An order's state now (never waits for it to finish)",
    )
    async def order_status(workflow_id: WorkflowIdPath, services: ServicesDep, user: UserDep) -> OrderStatusOut:
        await owned_order(services, user, workflow_id)
        return OrderStatusOut.of(await services.order_status(workflow_id))

    @app.post(
        "/execution/order/{workflow_id}/cancel",
        response_model=CancelOut,
        responses={**ERROR_RESPONSES, 202: {"model": CancelOut, "description": "asked; no answer yet"}},
        tags=["orders"],
        summary="Cancel an order in flight (409 with what it ended as if it already finished)",
        description="200 cancelled; 202 asked, the broker has not answered yet (the cancel holds); 409 the order "
        "had already ended, or the broker refused the cancel because a fill raced it.",
    )
    async def cancel_order(
        workflow_id: WorkflowIdPath,
        services: ServicesDep,
        user: UserDep,
        body: Annotated[CancelIn | None, Body()] = None,
    ) -> JSONResponse:
        await owned_order(services, user, workflow_id)
        request = body or CancelIn()
        reason = f"{request.reason} ({requested_by(user)})"
        outcome = await services.cancel_order(workflow_id, reason, wait_seconds=request.wait_seconds)
        if outcome.accepted is False:
            raise ApiError(
                status.HTTP_409_CONFLICT,
                f"the broker refused the cancel ({outcome.message}); a fill that raced it is kept: follow the status",
                workflow_id=workflow_id,
            )
        answer = CancelOut(workflow_id=outcome.workflow_id, accepted=outcome.accepted, message=outcome.message)
        code = status.HTTP_202_ACCEPTED if outcome.accepted is None else status.HTTP_200_OK
        return JSONResponse(status_code=code, content=answer.model_dump(mode="json"))

    @app.get(
        "/execution/history",
        response_model=HistoryPageOut,
        responses=ERROR_RESPONSES,
        tags=["orders"],
        summary="The audit log of your orders, newest first",
    )
    async def history(
        services: ServicesDep,
        user: UserDep,
        strategy_id: Annotated[int | None, Query(gt=0, le=MAX_ID)] = None,
        status_: Annotated[Literal["ATTEMPTING", "SUCCESS", "FAILED", "ERROR"] | None, Query(alias="status")] = None,
        order_type: Annotated[Literal["BUY", "SELL", "SL_SELL"] | None, Query()] = None,
        since: Annotated[AwareDatetime | None, Query(description="inclusive, with a time zone")] = None,
        until: Annotated[AwareDatetime | None, Query(description="exclusive, with a time zone")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_\-=]+$")] = None,
    ) -> HistoryPageOut:
        page = await services.store.order_history(
            HistoryQuery(
                user_id=user.id, strategy_id=strategy_id, status=status_, order_type=order_type, since=since,
                until=until, limit=limit, cursor=cursor,
            )
        )
        return HistoryPageOut(items=[HistoryItemOut.of(item) for item in page.items], next_cursor=page.next_cursor)


def _add_control_routes(app: FastAPI) -> None:
    @app.post(
        "/execution/emergency-stop",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=EmergencyStopOut,
        responses={**ERROR_RESPONSES, 403: {"model": ErrorOut}},
        tags=["control"],
        summary="Stop all your strategies now, cancel their orders, optionally square off",
    )
    async def emergency_stop(body: EmergencyStopIn, services: ServicesDep, user: UserDep) -> EmergencyStopOut:
        if body.all_users and not user.is_admin:
            raise ApiError(
                status.HTTP_403_FORBIDDEN,
                "only an administrator may stop every user's strategies; leave all_users out to stop your own",
            )
        workflow_id = await temporal_call(
            "start the emergency stop",
            start_emergency_stop(
                services.client,
                services.settings,
                user_id=None if body.all_users else user.id,
                square_off=body.square_off,
                reason=body.reason,
                requested_by=requested_by(user),
            ),
            timeout=None,
        )
        scope = "every user's" if body.all_users else "your"
        return EmergencyStopOut(
            workflow_id=workflow_id,
            message=f"emergency stop started: {scope} strategies are stopped"
            + (" and open positions squared off" if body.square_off else ""),
        )

    @app.get(
        "/execution/interventions",
        response_model=list[InterventionOut],
        responses=ERROR_RESPONSES,
        tags=["control"],
        summary="Your strategies waiting for a person",
    )
    async def interventions(services: ServicesDep, user: UserDep) -> list[InterventionOut]:
        return [InterventionOut.of(record) for record in await services.store.list_interventions(user.id)]

    @app.post(
        "/execution/interventions/{strategy_id}/clear",
        response_model=StrategyOut,
        responses=ERROR_RESPONSES,
        tags=["control"],
        summary="Mark a strategy's manual intervention as done",
    )
    async def clear_intervention(strategy_id: StrategyIdPath, services: ServicesDep, user: UserDep) -> StrategyOut:
        await owned_strategy(services, user, strategy_id)
        return StrategyOut.of(await services.store.clear_intervention(strategy_id, requested_by(user)))


def _add_strategy_routes(app: FastAPI) -> None:
    @app.post(
        "/strategies",
        status_code=status.HTTP_201_CREATED,
        response_model=StrategyOut,
        responses=ERROR_RESPONSES,
        tags=["strategies"],
        summary="Create a strategy (STOPPED until started)",
    )
    async def create_strategy(body: StrategyIn, services: ServicesDep, user: UserDep) -> StrategyOut:
        await _owned_account(services, user, body.broker_account_id)
        record = await services.store.create_strategy(StrategySpec(user_id=user.id, **body.model_dump()))
        return StrategyOut.of(record)

    @app.get("/strategies", response_model=list[StrategyOut], responses=ERROR_RESPONSES, tags=["strategies"])
    async def list_strategies(
        services: ServicesDep,
        user: UserDep,
        status_: Annotated[Literal["STOPPED", "RUNNING", "SL_TRIGGERED"] | None, Query(alias="status")] = None,
    ) -> list[StrategyOut]:
        return [StrategyOut.of(record) for record in await services.store.list_strategies(user.id, status_)]

    @app.get("/strategies/{strategy_id}", response_model=StrategyOut, responses=ERROR_RESPONSES, tags=["strategies"])
    async def get_strategy(strategy_id: StrategyIdPath, services: ServicesDep, user: UserDep) -> StrategyOut:
        record = await owned_strategy(services, user, strategy_id)
        try:
            schedules = await temporal_call("read the schedules", services.schedules.describe(record.id))
        except TemporalUnavailable:
            return StrategyOut.of(record)
        return StrategyOut.of(record, schedules)

    @app.patch(
        "/strategies/{strategy_id}",
        response_model=StrategyOut,
        responses=ERROR_RESPONSES,
        tags=["strategies"],
        summary="Change settings; schedules follow new entry and exit times",
    )
    async def update_strategy(
        strategy_id: StrategyIdPath, body: StrategyPatch, services: ServicesDep, user: UserDep
    ) -> StrategyOut:
        await owned_strategy(services, user, strategy_id)
        changes = body.model_dump(exclude_unset=True)
        if changes.get("broker_account_id") is not None:
            await _owned_account(services, user, changes["broker_account_id"])
        record = await services.store.update_strategy(strategy_id, **changes)
        if {"entry_time", "exit_time"} & changes.keys():
            await services.sync_schedules(record)
        return StrategyOut.of(record)

    @app.post(
        "/strategies/{strategy_id}/start",
        response_model=StrategyOut,
        responses=ERROR_RESPONSES,
        tags=["strategies"],
        summary="RUNNING: orders pass validation, schedules fire",
    )
    async def start_strategy(strategy_id: StrategyIdPath, services: ServicesDep, user: UserDep) -> StrategyOut:
        await owned_strategy(services, user, strategy_id)
        record = await services.start_strategy(strategy_id, f"started by {requested_by(user)}")
        return StrategyOut.of(record, await services.schedules.describe(record.id))

    @app.post(
        "/strategies/{strategy_id}/stop",
        response_model=StrategyOut,
        responses=ERROR_RESPONSES,
        tags=["strategies"],
        summary="STOPPED: no new order passes validation, schedules paused",
    )
    async def stop_strategy(
        strategy_id: StrategyIdPath,
        services: ServicesDep,
        user: UserDep,
        body: Annotated[StopIn | None, Body()] = None,
    ) -> StrategyOut:
        await owned_strategy(services, user, strategy_id)
        reason = f"{(body or StopIn()).reason} ({requested_by(user)})"
        record = await services.stop_strategy(strategy_id, reason)
        return StrategyOut.of(record, await services.schedules.describe(record.id))


class ExitIn(StrictBody):
    reason: Text | None = None
    wait_seconds: WaitSeconds = 0


def _add_strategy_exit_route(app: FastAPI) -> None:
    @app.post(
        "/strategies/{strategy_id}/exit",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=OrderAcceptedOut,
        responses={**ORDER_RESPONSES, 200: {"model": OrderAcceptedOut, "description": "waited: the order ended"}},
        tags=["strategies"],
        summary="Sell whatever the strategy still holds, at market, whatever its state (exit reason MANUAL)",
        description="The way out after a partial exit, a failed stop-loss or an emergency stop without "
        "square-off. 409 when the strategy holds nothing or another exit of the position is in flight.",
    )
    async def exit_strategy_position(
        strategy_id: StrategyIdPath,
        services: ServicesDep,
        user: UserDep,
        body: Annotated[ExitIn | None, Body()] = None,
    ) -> JSONResponse:
        strategy = await owned_strategy(services, user, strategy_id)
        request = body or ExitIn()
        try:
            handle = await temporal_call(
                "start the exit",
                services.starter.exit_position(strategy, requested_by=requested_by(user), reason=request.reason),
                timeout=None,
            )
        except NothingToExit as nothing:
            raise ApiError(status.HTTP_409_CONFLICT, str(nothing)) from None
        return await _answer_after_waiting(services, handle.id, request.wait_seconds)


async def _owned_account(services: Services, user: UserRecord, account_id: int) -> None:
    account = await services.store.get_broker_account(account_id)
    if account.user_id != user.id:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, f"broker account {account_id} does not exist; add it first or check the id"
        )


def _add_health_route(app: FastAPI) -> None:
    @app.get(
        "/health",
        response_model=HealthOut,
        responses={503: {"model": HealthOut}},
        tags=["health"],
        summary="Is the database reachable, is Temporal?",
    )
    async def health(services: ServicesDep) -> JSONResponse:
        database = await _probe(_database_ping(services))
        temporal = await _probe(temporal_call("health check", services.client.service_client.check_health()))
        healthy = database == temporal == "ok"
        answer = HealthOut(status="ok" if healthy else "degraded", database=database, temporal=temporal)
        code = status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE
        return JSONResponse(status_code=code, content=answer.model_dump())


async def _database_ping(services: Services) -> None:
    async with services.store.engine.connect() as connection:
        await connection.exec_driver_sql("SELECT 1")


async def _probe(check: Awaitable[Any]) -> str:
    try:
        answer = await check
    except Exception as error:  # any failure is the answer here
        return f"unreachable: {type(error).__name__}"
    return "not serving" if answer is False else "ok"


app = create_app()
